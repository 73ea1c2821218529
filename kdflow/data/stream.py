"""Reading dataset shards as a stream: a read-ahead thread and a local disk cache of remote shards.

Both keep memory bounded: the read-ahead holds at most ``prefetch`` decoded shards beyond the one
the consumer has, and the disk cache holds at most ``KDFLOW_SHARD_CACHE_BYTES`` of shard files (least
recently used ones are evicted), so an ImageNet-sized split streams through a fixed footprint.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

from kdflow.util.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")

CACHE_DIR_ENV = "KDFLOW_SHARD_CACHE"  # a folder shared by the processes of a pod (DDP ranks); else a temp dir
CACHE_BYTES_ENV = "KDFLOW_SHARD_CACHE_BYTES"
# A pod's scratch disk is usually tens of GiB; ImageNet at 224 px is ~140 GiB of uint8 shards, so the
# default keeps a useful working set without filling the disk. Raise it where the disk allows, so
# later epochs read everything locally.
DEFAULT_CACHE_BYTES = 16 << 30
_POLL_S = 0.1  # how often a blocked read-ahead thread checks whether the consumer has gone


def read_ahead(items: Iterable[T], read: Callable[[T], U], prefetch: int) -> Iterator[U]:
    """``read(item)`` for each item in order, computed by a background thread up to ``prefetch`` ahead.

    An exception in ``read`` is raised to the consumer at the item where it happened. When the
    consumer stops early (break, exception, garbage collection), the thread notices within
    ``_POLL_S`` and exits without reading further. ``prefetch=0`` reads in the caller's thread.
    """
    if prefetch <= 0:
        for item in items:
            yield read(item)
        return
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def put(value) -> bool:
        while not stop.is_set():
            try:
                out.put(value, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if stop.is_set() or not put((True, read(item))):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((False, exc))
            return
        put((True, done))

    thread = threading.Thread(target=work, name="kdflow-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = out.get()
            if not ok:
                raise value
            if value is done:
                return
            # Yielded out of a box, so this frame keeps no reference to the consumer's shard: it is
            # freed as soon as the consumer drops it, not when the next one arrives.
            box = [value]
            del value
            yield box.pop()
    finally:
        stop.set()
        # Drop what was read ahead, so the shards are freed now rather than with the queue.
        while True:
            try:
                out.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=10 * _POLL_S + 5)


class ShardDiskCache:
    """Content-addressed local copies of remote shard files (named by their sha256), LRU-bounded.

    Recency is the file's mtime (touched on every hit), so processes sharing one folder share one
    LRU. Files appear atomically (temp file + rename), so concurrent readers never see a partial one.
    """

    def __init__(self, folder: str | Path, max_bytes: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.npz"

    def get(self, sha256: str) -> bytes | None:
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return None
        try:
            os.utime(p)
        except FileNotFoundError:  # evicted by another process meanwhile; the bytes are still good
            pass
        return data

    def discard(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def put(self, sha256: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return  # caching it would evict everything and still not fit
        with self._lock:
            self._evict(self.max_bytes - len(data))
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self.path(sha256))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def _evict(self, budget: int) -> None:
        """Delete least recently used files until the cached bytes are at most ``budget``."""
        files = []
        for p in self.folder.glob("*.npz"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            files.append((st.st_mtime_ns, st.st_size, p))
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files, key=lambda f: f[0]):
            if total <= budget:
                break
            p.unlink(missing_ok=True)
            total -= size

    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.npz"))


_cache: ShardDiskCache | None = None
_cache_lock = threading.Lock()


def shard_cache() -> ShardDiskCache:
    """The process's disk cache of remote shards: ``$KDFLOW_SHARD_CACHE``, or a temp dir removed at exit."""
    global _cache
    raw = os.environ.get(CACHE_BYTES_ENV, str(DEFAULT_CACHE_BYTES))
    try:
        max_bytes = int(raw)
    except ValueError:
        raise ConfigError(f"{CACHE_BYTES_ENV} is {raw!r}, not a number of bytes",
                          f"set {CACHE_BYTES_ENV} to an integer such as {DEFAULT_CACHE_BYTES}") from None
    folder = os.environ.get(CACHE_DIR_ENV, "")
    with _cache_lock:
        if _cache is not None and (not folder or _cache.folder == Path(folder)):
            _cache.max_bytes = max_bytes
            return _cache
        if not folder:
            folder = tempfile.mkdtemp(prefix="kdflow-shards-")
            atexit.register(shutil.rmtree, folder, True)
        _cache = ShardDiskCache(folder, max_bytes)
        log.info("caching remote dataset shards in %s (at most %.1f GiB)", folder, max_bytes / 2**30)
        return _cache
