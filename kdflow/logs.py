"""Logging for entry points (CLI and pipeline steps); the library itself only creates loggers."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """Send kdflow's log records to stderr once, however often it is called."""
    logger = logging.getLogger("kdflow")
    if not any(getattr(h, "_kdflow", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._kdflow = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # a KFP executor also logs the root logger: print once
    logger.setLevel(level)
