"""The ``kdflow`` command line (``main``; ``entrypoint`` is the console script)."""

from kdflow.cli.main import entrypoint, main

__all__ = ["entrypoint", "main"]
