"""Built-in configurations (package data)."""
