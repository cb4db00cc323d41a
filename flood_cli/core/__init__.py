"""The foundation every command shares: errors, safe YAML, the reporter protocol, the mode registry."""
