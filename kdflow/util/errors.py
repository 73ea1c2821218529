"""One exception type for problems a user can fix, with the fix in the message."""

from __future__ import annotations


class KdflowError(Exception):
    """A problem with the user's input or environment, not a bug in kdflow.

    ``problem`` says what is wrong, ``fix`` says what to do about it. The CLI prints both and exits
    non-zero without a traceback.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


class ConfigError(KdflowError):
    """The configuration has an unknown key, a wrong type or an invalid value."""


class DataError(KdflowError):
    """The dataset cannot be ingested as given."""


class CacheError(KdflowError):
    """A soft-label cache entry is missing, incomplete or does not verify."""


class StorageError(KdflowError):
    """Object storage refused or failed an operation."""
