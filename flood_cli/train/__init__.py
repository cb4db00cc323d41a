"""flood train: the training loop and what it needs (objectives, AdaFlood, checkpoints)."""
