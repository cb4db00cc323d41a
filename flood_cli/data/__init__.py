"""Reading, checking and tokenizing the data; batches and their order."""
