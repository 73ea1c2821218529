"""One small interface over object storage: local folders (``file://`` or a plain path) and S3.

Writes are all-or-nothing: a reader sees an object either complete or not at all (a temp file and
``os.replace`` locally; S3 PUTs are atomic). The S3 client is made at first use, so the endpoint and
credentials come from the environment at run time (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...).
"""

from __future__ import annotations

import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from kdflow.errors import StorageError

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


@register_scheme("", "file")
class LocalStorage(Storage):
    def read_bytes(self, uri: str) -> bytes:
        p = local_path(uri)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            raise StorageError(f"{uri} does not exist", "check the path or run the step that writes it") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        p = local_path(uri)
        p.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target, then rename: a crash leaves a stray temp file, never a torn object.
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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


@register_scheme("s3")
class S3Storage(Storage):
    def __init__(self) -> None:
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3  # boto3 reads AWS_ENDPOINT_URL and credentials now, at run time
            from botocore.config import Config

            # Preprocess fetches images from several threads; botocore's default pool of 10
            # connections would make the rest wait and reconnect.
            self._client = boto3.client("s3", config=Config(max_pool_connections=32))
        return self._client

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        u = urlparse(uri)
        if not u.netloc:
            raise StorageError(f"S3 URI '{uri}' names no bucket", "write it as s3://BUCKET/KEY")
        return u.netloc, u.path.lstrip("/")

    def _call(self, what: str, uri: str, fn: Callable, **kwargs):
        """Run one boto3 call; turn its failures into StorageErrors that say what to fix."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except NoCredentialsError:
            raise StorageError(
                f"no S3 credentials to {what} {uri}",
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO)",
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise StorageError(
                    f"S3 bucket of {uri} does not exist", "create the bucket or fix the URI"
                ) from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(uri) from None
            raise StorageError(f"S3 refused to {what} {uri}: {code} {exc}", "check access rights") from exc
        except BotoCoreError as exc:
            raise StorageError(
                f"cannot reach S3 to {what} {uri}: {exc}", "check AWS_ENDPOINT_URL and the network"
            ) from exc

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = self._split(uri)
        try:
            resp = self._call("read", uri, self.client.get_object, Bucket=bucket, Key=key)
        except FileNotFoundError:
            raise StorageError(f"{uri} does not exist", "check the URI or run the step that writes it") from None
        return resp["Body"].read()

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self._split(uri)
        self._call("write", uri, self.client.put_object, Bucket=bucket, Key=key, Body=data)

    def size(self, uri: str) -> int | None:
        bucket, key = self._split(uri)
        try:
            head = self._call("stat", uri, self.client.head_object, Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def exists(self, uri: str) -> bool:
        return self.size(uri) is not None

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        bucket, key = self._split(prefix)
        key = key.rstrip("/") + "/" if key else ""
        # One ListObjectsV2 call returns at most 1000 keys; the paginator follows the continuation
        # tokens. Pages are fetched inside _call so a missing bucket mid-listing is a clear error.
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=key)
        out = []
        for page in self._call("list", prefix, lambda: list(pages)):
            out.extend(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj.get("ETag"))
                       for obj in page.get("Contents", []))
        return sorted(out, key=lambda o: o.uri)

    def delete(self, uri: str) -> None:
        bucket, key = self._split(uri)
        self._call("delete", uri, self.client.delete_object, Bucket=bucket, Key=key)
