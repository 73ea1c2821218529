"""What a step does before its own work: logging, its process's memory settings, its checked inputs."""

from __future__ import annotations

from kdflow.config import Config
from kdflow.util.logs import setup_logging
from kdflow.util.memory import bound_heap
from kdflow.util.redact import refuse_credentials


def begin_step(config_yaml: str, *, heavy: bool = False, tracking_uri: str | None = None) -> Config:
    """Set the step's process up and return its config (``Config.from_yaml``: parsed and checked).

    Logging goes to stderr, redacted, and uncaught tracebacks are redacted too (kdflow.util.logs).
    ``tracking_uri``: the step's tracking_uri parameter, refused when it carries credentials (the
    entry points refuse it too: defence in depth). ``heavy``: the step reads the data or trains, so
    its heap is kept from growing with the work done (kdflow.util.memory).
    """
    setup_logging()
    refuse_credentials(tracking_uri, "the tracking_uri parameter")
    if heavy:
        bound_heap()
    return Config.from_yaml(config_yaml)
