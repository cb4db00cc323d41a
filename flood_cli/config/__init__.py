"""The run configuration: its schema and its loading with overrides."""
