"""Logging for entry points (CLI and pipeline steps); the library itself only creates loggers."""

from __future__ import annotations

import logging
import sys
import threading


class RedactingFormatter(logging.Formatter):
    """Masks credentials in the whole formatted record, traceback included: a URI's user-info or
    token query, and the values of the environment's secret variables (kdflow.util.redact). Log lines
    end up in pipeline logs and files that outlive the run, so a message that quotes a URI or an
    exception must not carry a secret with it."""

    def format(self, record: logging.LogRecord) -> str:
        from kdflow.util.redact import redact_text

        return redact_text(super().format(record))


def _write_redacted(exc_type, exc, tb, header: str = "") -> None:
    import traceback

    try:
        from kdflow.util.redact import redact_text

        text = redact_text(header + "".join(traceback.format_exception(exc_type, exc, tb)))
    except BaseException:  # never fall back to the raw text: it may be what holds the secret
        name = getattr(exc_type, "__name__", exc_type)
        text = f"{header}{name} (its message is withheld: it could not be redacted)\n"
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # no stderr left (closed at shutdown): nothing to do
        pass


def _redacting_excepthook(exc_type, exc, tb) -> None:
    """sys.excepthook: the traceback of an uncaught exception, redacted. It goes to the step's pod
    log (or the terminal), and exceptions quote URIs: MLflow's own errors name the full tracking URL
    ("API request to {url} failed"), which on a cluster may carry credentials from a Kubernetes secret."""
    _write_redacted(exc_type, exc, tb)


def _redacting_thread_hook(args) -> None:
    if args.exc_type is SystemExit:  # as threading's own hook: a thread's SystemExit is silent
        return
    name = args.thread.name if args.thread is not None else "?"
    _write_redacted(args.exc_type, args.exc_value, args.exc_traceback, f"Exception in thread {name}:\n")


def install_excepthook() -> None:
    """Print uncaught exceptions redacted (kdflow.util.redact): the main thread's always, a thread's only
    where no one else (a test runner) has taken threading.excepthook over."""
    sys.excepthook = _redacting_excepthook
    if threading.excepthook is threading.__excepthook__:
        threading.excepthook = _redacting_thread_hook


def setup_logging(level: int = logging.INFO) -> None:
    """Send kdflow's log records to stderr once, however often it is called, redacted; and print
    uncaught exceptions redacted too (every step calls this first)."""
    install_excepthook()
    logger = logging.getLogger("kdflow")
    if not any(getattr(h, "_kdflow", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._kdflow = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # a KFP executor also logs the root logger: print once
    logger.setLevel(level)
