"""The command line: parses options and calls the commands."""
