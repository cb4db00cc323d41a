"""The run folder: its files, its columns, and the trackers that mirror them."""
