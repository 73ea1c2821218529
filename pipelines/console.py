"""What a local run shows: one line per finished step, kdflow's own messages, and the failing step's
log; everything kfp.local prints (each task's whole executor input as JSON, hundreds of lines a run)
goes to a log file instead, whose path the run's summary names.

kfp.local writes both its own log lines and every task's output to ``sys.stdout`` of this process
(its logging handler is created on ``sys.stdout`` when a run starts), so redirecting ``sys.stdout``
around the run catches all of it.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Iterator

from kdflow.util.redact import redact_text

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
# kdflow's own log lines, as steps print them (kdflow.util.logs): "12:00:00 INFO kdflow.steps.teacher: ..."
_KDFLOW = re.compile(r"^\s*\d\d:\d\d:\d\d (INFO|WARNING|ERROR) kdflow[\w.]*: ")
FAILED_TAIL = 40  # lines of a failing step's log shown on the console


class StepConsole:
    """A file-like sink: every line to ``log``, a digest of them to ``console``."""

    def __init__(self, log: IO[str], console: IO[str]):
        self.log, self.console = log, console
        self._partial = ""
        self._started: dict[str, float] = {}
        self._recent: deque[str] = deque(maxlen=FAILED_TAIL)  # the current step's last lines

    def write(self, text: str) -> int:
        # Whole lines only, each redacted (kdflow.util.redact: a URI's credentials, the environment's
        # secret values) before it reaches the log file or the console: a secret split over two
        # writes is still caught.
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            line = redact_text(line)
            self.log.write(line + "\n")
            self._line(_ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def close(self) -> None:
        """Write what is left of an unterminated last line."""
        if self._partial:
            self.log.write(redact_text(self._partial))
            self._partial = ""
        self.flush()

    def isatty(self) -> bool:  # no colours in the log file
        return False

    def _line(self, line: str) -> None:
        if start := _START.search(line):
            self._started[start.group(1)] = time.monotonic()
            self._recent.clear()
            return
        if end := _END.search(line):
            name, state = end.groups()
            seconds = time.monotonic() - self._started.pop(name, time.monotonic())
            self.console.write(f"  {'done' if state == 'SUCCESS' else state:7s} {name:22s} {seconds:6.1f} s\n")
            if state != "SUCCESS":
                self.console.write("".join(f"    | {line}\n" for line in self._recent))
            self.console.flush()
            return
        self._recent.append(line)
        if _KDFLOW.match(line):
            self.console.write(f"    {line.strip()}\n")


@contextlib.contextmanager
def steps_to_console(log_path: str | None) -> Iterator[None]:
    """Within: kfp.local's output goes to ``log_path`` and a digest to stderr. None: untouched."""
    if log_path is None:
        yield
        return
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        sink = StepConsole(log, sys.stderr)
        with contextlib.redirect_stdout(sink):
            try:
                yield
            finally:
                sink.close()
