"""Local folders (a plain path or ``file://``): atomic writes by rename, exclusive creation by link(2)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kdflow.storage.base import ObjectInfo, Storage, local_path, register_scheme
from kdflow.util.errors import StorageError


@register_scheme("", "file")
class LocalStorage(Storage):
    def read_bytes(self, uri: str) -> bytes:
        p = local_path(uri)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri} does not exist", "check the path or run the step that writes it") from None

    @staticmethod
    def _temp_beside(p: Path, data: bytes) -> str:
        """``data`` written and fsynced to a temp file in ``p``'s folder (so a rename or link is atomic);
        ``.tmp`` names are left out of listings, so a crash leaves a stray file, never a torn object."""
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return tmp

    def write_bytes(self, uri: str, data: bytes) -> None:
        p = local_path(uri)
        tmp = self._temp_beside(p, data)
        try:
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_if_absent(self, uri: str, data: bytes) -> bool:
        p = local_path(uri)
        # A complete temp file first, then link(2): it fails if the target exists and is atomic, so
        # the target appears whole or not at all, and exactly one of several racing writers wins.
        # (os.replace would silently overwrite the winner.)
        tmp = self._temp_beside(p, data)
        try:
            try:
                os.link(tmp, p)
            except FileExistsError:
                return False
            except OSError as exc:  # EPERM/ENOTSUP: a filesystem without hard links (some FUSE mounts)
                raise StorageError(f"cannot create {uri} exclusively: {exc}",
                                   "put this folder on a filesystem with hard links (local disk, NFS) "
                                   "or use s3://") from exc
            return True
        finally:
            Path(tmp).unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return local_path(uri).is_file()

    def size(self, uri: str) -> int | None:
        p = local_path(uri)
        return p.stat().st_size if p.is_file() else None

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        root = local_path(prefix)
        if not root.is_dir():
            return []
        scheme = "file://" if prefix.startswith("file://") else ""
        return sorted(
            (ObjectInfo(f"{scheme}{p}", p.stat().st_size, None)
             for p in root.rglob("*") if p.is_file() and not p.name.endswith(".tmp")),
            key=lambda o: o.uri,
        )

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)
