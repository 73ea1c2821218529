"""Logging for entry points (CLI and pipeline steps); the library itself only creates loggers."""

from __future__ import annotations

import logging
import sys


class RedactingFormatter(logging.Formatter):
    """Masks credentials in the whole formatted record, traceback included: a URI's user-info or
    token query, and the values of the environment's secret variables (kdflow.redact). Log lines
    end up in pipeline logs and files that outlive the run, so a message that quotes a URI or an
    exception must not carry a secret with it."""

    def format(self, record: logging.LogRecord) -> str:
        from kdflow.redact import redact_text

        return redact_text(super().format(record))


def setup_logging(level: int = logging.INFO) -> None:
    """Send kdflow's log records to stderr once, however often it is called."""
    logger = logging.getLogger("kdflow")
    if not any(getattr(h, "_kdflow", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._kdflow = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # a KFP executor also logs the root logger: print once
    logger.setLevel(level)
