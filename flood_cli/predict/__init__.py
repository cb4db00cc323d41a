"""`flood predict`: a trained run's model applied to a file of texts, streamed in chunks."""
