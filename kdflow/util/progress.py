"""Progress of long loops: a bar on a terminal, periodic log lines elsewhere (pod logs, log files).

A tqdm bar redraws itself with carriage returns; in a pod's log (or kfp.local's log file) that is
one unreadable line per redraw. So the bar is drawn only when stderr is a terminal, and otherwise
the same figures (done/total, rate, time left) go out as an INFO log line every ``interval``
seconds (``KDFLOW_PROGRESS_INTERVAL``, default 30, read when the loop starts) and once at the end.

    for batch in progress(loader, total=len(loader), desc="teacher inference", unit="img", scale=b):
        ...

``advance(n)`` counts items that are not the iterable's elements (images in a batch of images).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

log = logging.getLogger("kdflow.util.progress")

ENV_INTERVAL = "KDFLOW_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    raw = os.environ.get(ENV_INTERVAL, "")
    try:
        return max(0.0, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts items; draws a tqdm bar on a terminal, else logs a line every ``interval`` seconds."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", terminal: bool | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = 0
        self.start = self._last = time.monotonic()
        self.interval = _interval()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self._bar = None
        if terminal:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                                 leave=False)
            except ImportError:  # tqdm is a dependency, but a bar is not worth failing a run for
                self._bar = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """``desc: done/total unit (pct), rate unit/s, ~eta left`` (the figures a bar shows)."""
        elapsed = max((now if now is not None else time.monotonic()) - self.start, 1e-9)
        rate = self.done / elapsed
        head = f"{self.desc}: {self.done}"
        if self.total:
            head += f"/{self.total} {self.unit} ({100.0 * self.done / self.total:.0f}%)"
        else:
            head += f" {self.unit}"
        text = f"{head}, {rate:.1f} {self.unit}/s, {_duration(elapsed)} elapsed"
        if self.total and rate > 0 and self.done < self.total:
            text += f", ~{_duration((self.total - self.done) / rate)} left"
        return text

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        else:
            log.info("%s", self.line())

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             scale: int = 1) -> Iterator[T]:
    """Yield ``items``, counting ``scale`` units per item (``total`` in units)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items) * scale  # type: ignore[arg-type]
    with Progress(total, desc, unit) as bar:
        for item in items:
            yield item
            bar.advance(scale)
