"""One small interface over object storage: local folders (``file://`` or a plain path) and S3.

Writes are all-or-nothing: a reader sees an object either complete or not at all (a temp file and
``os.replace`` locally; S3 PUTs are atomic). ``write_if_absent`` creates an object only where none
is (a hard link locally, ``If-None-Match: *`` on S3): the one primitive concurrent runs need to
agree on who writes a key. The S3 backend (kdflow.storage.s3) retries transient failures.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from kdflow.util.errors import StorageError

_SCHEMES: dict[str, Callable[[], "Storage"]] = {}


def register_scheme(*schemes: str):
    """Class decorator: make a Storage backend serve URIs with these schemes."""

    def wrap(cls):
        for s in schemes:
            _SCHEMES[s] = cls
        return cls

    return wrap


def list_schemes() -> list[str]:
    return sorted(s for s in _SCHEMES if s)


@dataclass(frozen=True)
class ObjectInfo:
    """One object found by ``Storage.list_info``."""

    uri: str
    size: int
    etag: str | None  # S3's ETag (content-derived); None where the backend has none (local files)


class Storage(ABC):
    """Bytes at URIs. Keys are '/'-separated; a 'prefix' lists everything below it."""

    @abstractmethod
    def read_bytes(self, uri: str) -> bytes: ...

    @abstractmethod
    def write_bytes(self, uri: str, data: bytes) -> None: ...

    @abstractmethod
    def write_if_absent(self, uri: str, data: bytes) -> bool:
        """Create the object at ``uri`` only if nothing is there: True when this call created it,
        False when an object already existed (nothing was written).

        False means "someone wrote it, maybe this very call": on S3 a PUT whose response was lost
        is retried, and the retry finds the object its own first attempt created. A caller that
        gets False must read the object and verify it (e.g. compare a digest), never assume it
        lost a race to different content, and never assume its own bytes are not there."""

    @abstractmethod
    def exists(self, uri: str) -> bool: ...

    @abstractmethod
    def size(self, uri: str) -> int | None:
        """Size in bytes, or None when the object does not exist."""

    @abstractmethod
    def list_info(self, prefix: str) -> list[ObjectInfo]:
        """Every object below ``prefix`` (recursively) with its size, sorted by URI."""

    def list(self, prefix: str) -> list[str]:
        """URIs of all objects below ``prefix`` (recursively), sorted."""
        return [o.uri for o in self.list_info(prefix)]

    @abstractmethod
    def delete(self, uri: str) -> None: ...


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with '/', whatever the scheme."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def storage_for(uri: str) -> Storage:
    scheme = urlparse(uri).scheme if "://" in uri else ""
    if scheme not in _SCHEMES:
        raise StorageError(
            f"unsupported storage URI '{uri}' (scheme '{scheme}')",
            f"use a local path or one of: {', '.join(s + '://' for s in list_schemes())}",
        )
    return _SCHEMES[scheme]()


def local_path(uri: str) -> Path:
    """The filesystem path of a plain path or ``file://`` URI."""
    return Path(urlparse(uri).path) if uri.startswith("file://") else Path(uri)
