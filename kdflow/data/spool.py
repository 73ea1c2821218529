"""Spool files: one fan-out part's decoded images and per-file metadata (phase 1 of preprocess).

Preprocess decodes a folder in parts (contiguous slices of the scanned candidate list), each into
one spool file, and then assembles the dataset from the spools' metadata, reading back only the
images one shard needs at a time. A spool is one file:

    [0:8]    b"KDSPOOL1"
    [8:16]   offset of the metadata (uint64, little-endian)
    [16:24]  length of the metadata
    [24:...] uint8 images [rows, S, S, 3], C order: one row per file that decoded
    [offset: offset + length]  the metadata, JSON: per file its path, class, predefined split,
             sha256, drop reason, image row and (when grouping by phash) perceptual hash

So the metadata is read without the images, and one image is one seek and one read (plain reads,
not mmap: mapped file pages would count in the process's resident memory). Its name carries a
digest of what decides its content (the listing, the part, the image spec), and it is written
whole or not at all (a temp file renamed into place; one upload to object storage), so an existing
spool of the right name is complete and is kept: a re-run part is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from kdflow.data.groups import PHASH
from kdflow.data.source import SourceListing, is_remote
from kdflow.data.split import SPLIT_CODES, FileTable
from kdflow.storage.digest import digest_of
from kdflow.util.errors import CacheError, StorageError
from kdflow.storage import join, local_path, storage_for

SPOOL_FORMAT = "kdflow.spool/1"
MAGIC = b"KDSPOOL1"
HEADER = 24  # magic + metadata offset + metadata length


def listing_digest(listing: SourceListing) -> str:
    """A cheap identifier of a listing: every file's path, size (and S3 ETag), and the empty folders.

    It decides which candidates a part holds, not their bytes (a local file rewritten with the same
    size keeps it): a work folder must belong to one version of the data (the pipeline keys it by
    the folder's content fingerprint)."""
    h = hashlib.sha256(listing.root.encode() + b"\0")
    for f in listing.files:
        h.update(f"{f.rel}\0{f.size}\0{f.etag or ''}\n".encode())
    h.update("\0".join(listing.empty_dirs).encode())
    return h.hexdigest()


def spool_key(listing_key: str, part: int, parts: int, image_size: int, resize: str, with_phash: bool,
              max_file_bytes: int = 0) -> str:
    # max_file_bytes decides which files are dropped unread, so a spool decoded under another cap
    # holds other rows.
    return digest_of({"format": SPOOL_FORMAT, "listing": listing_key, "part": part, "parts": parts,
                      "image_size": image_size, "resize": resize, "phash": PHASH if with_phash else None,
                      "max_file_bytes": max_file_bytes})


def part_bounds(n: int, part: int, parts: int) -> tuple[int, int]:
    """The candidate slice [lo, hi) of ``part`` of ``parts`` (contiguous, sizes differ by at most 1)."""
    return n * part // parts, n * (part + 1) // parts


def spool_uri(work_root: str, part: int, parts: int, key: str) -> str:
    return join(work_root, "parts", f"part-{part:05d}-of-{parts:05d}-{key[:16]}.spool")


class SpoolWriter:
    """Writes a spool to a local temp file as images arrive; ``finish`` makes it whole, ``abort``
    removes it. Holds no image beyond the one being written."""

    def __init__(self, folder: Path, image_size: int):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".spool-", suffix=".tmp")
        self.path = Path(tmp)
        self.f = os.fdopen(fd, "wb")
        self.f.write(b"\0" * HEADER)
        self.shape = (image_size, image_size, 3)
        self.rows = 0

    def add(self, image: np.ndarray) -> int:
        """Append one uint8 [S, S, 3] image; returns its row."""
        if image.shape != self.shape or image.dtype != np.uint8:
            raise ValueError(f"spool image must be uint8 {self.shape}, not {image.dtype} {image.shape}")
        self.f.write(np.ascontiguousarray(image).data)
        self.rows += 1
        return self.rows - 1

    def finish(self, meta: dict) -> Path:
        """Write the metadata and the header; returns the complete temp file (the caller places it)."""
        body = json.dumps({**meta, "format": SPOOL_FORMAT, "rows": self.rows,
                           "image_shape": list(self.shape)}, separators=(",", ":")).encode()
        offset = self.f.tell()
        self.f.write(body)
        self.f.seek(0)
        self.f.write(MAGIC + struct.pack("<QQ", offset, len(body)))
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return self.path

    def abort(self) -> None:
        self.f.close()
        self.path.unlink(missing_ok=True)


def place(tmp: Path, uri: str) -> None:
    """Move a finished local spool to ``uri``: a rename for a local work folder, one upload for S3
    (boto3's managed upload: a large file goes up in parts, and the object appears only when
    complete). ``tmp`` is gone afterwards."""
    if not is_remote(uri):
        dest = local_path(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
        return
    try:
        store = storage_for(uri)
        client = getattr(store, "client", None)
        if client is not None and uri.startswith("s3://"):
            u = urlparse(uri)
            try:
                client.upload_file(str(tmp), u.netloc, u.path.lstrip("/"))
            except Exception as exc:  # boto3's transfer errors: S3UploadFailedError, ClientError, ...
                raise StorageError(f"could not upload spool {uri}: {exc}",
                                   "check the work folder's bucket, credentials and AWS_ENDPOINT_URL") from exc
        else:
            store.write_bytes(uri, tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)


def fetch(uri: str, cache: Path | None) -> Path:
    """A local path to read the spool at ``uri`` from: the file itself when local, else one download
    into ``cache`` (a temp folder the caller removes)."""
    if not is_remote(uri):
        return local_path(uri)
    dest = cache / uri.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    store = storage_for(uri)
    client = getattr(store, "client", None)
    tmp = dest.with_suffix(".part")
    try:
        if client is not None and uri.startswith("s3://"):
            u = urlparse(uri)
            client.download_file(u.netloc, u.path.lstrip("/"), str(tmp))
        else:
            tmp.write_bytes(store.read_bytes(uri))
    except StorageError:
        raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"could not download spool {uri}: {exc}",
                           "check that the decode tasks ran and the work folder is readable") from exc
    os.replace(tmp, dest)
    return dest


def read_meta(path: Path) -> dict:
    """The metadata of a local spool, checked for completeness (header, sizes); the images are not read."""
    with open(path, "rb") as f:
        head = f.read(HEADER)
        if len(head) != HEADER or head[:8] != MAGIC:
            raise CacheError(f"{path} is not a kdflow spool", "delete it and run the decode part again")
        offset, length = struct.unpack("<QQ", head[8:])
        f.seek(offset)
        meta = json.loads(f.read(length))
        size = f.seek(0, os.SEEK_END)
    rows, shape = meta["rows"], meta["image_shape"]
    if meta.get("format") != SPOOL_FORMAT or offset != HEADER + rows * int(np.prod(shape)) \
            or size != offset + length:
        raise CacheError(f"spool {path} is incomplete or of another format",
                         "delete it and run the decode part again")
    return meta


def spool_is_valid(uri: str) -> bool:
    """Whether a complete spool is at ``uri`` (S3: the object exists; uploads are all-or-nothing)."""
    if is_remote(uri):
        return storage_for(uri).exists(uri)
    path = local_path(uri)
    if not path.is_file():
        return False
    try:
        read_meta(path)
    except (CacheError, ValueError, KeyError, struct.error):
        return False
    return True


def part_columns(meta: dict, class_names: list[str], part: int) -> dict:
    """One spool's metadata as numpy columns (see ``FileTable``): a few dozen bytes per file, where
    the parsed JSON takes hundreds; ``reasons`` is keyed by the file's index within the part."""
    label_of = {name: i for i, name in enumerate(class_names)}
    files = meta["files"]
    n = len(files["rel"])
    row = np.array(files["row"], np.int64)
    return {
        "rel": np.array([r.encode() for r in files["rel"]], dtype=bytes).reshape(n),
        "label": np.array([label_of[x] for x in files["label"]], np.int64),
        "split": np.array([SPLIT_CODES[x] for x in files["split"]], np.int8),
        "sha": np.array([bytes.fromhex(x) for x in files["sha256"]], dtype="S32").reshape(n),
        "ok": row >= 0,
        "part": np.full(n, part, np.int32),
        "row": row,
        "phash": (None if files.get("phash") is None else
                  np.array([0 if h is None else int(h, 16) for h in files["phash"]], np.uint64)),
        "reasons": {i: r for i, r in enumerate(files["reason"]) if r is not None},
    }


def file_table(parts: list[dict]) -> FileTable:
    """The FileTable of all parts' columns, in part order (= scan order)."""
    def cat(name: str, dtype) -> np.ndarray:
        return np.concatenate([p[name] for p in parts]) if parts else np.zeros(0, dtype)

    reasons, n = {}, 0
    for p in parts:
        reasons.update({n + i: r for i, r in p["reasons"].items()})
        n += len(p["row"])
    with_phash = bool(parts) and all(p["phash"] is not None for p in parts)
    return FileTable(cat("rel", "S1"), cat("label", np.int64), cat("split", np.int8), cat("sha", "S32"),
                     cat("ok", bool), cat("part", np.int32), cat("row", np.int64), reasons,
                     cat("phash", np.uint64) if with_phash else None)


class SpoolReader:
    """Reads image rows from local spools with seek + read, keeping at most ``max_open`` files open."""

    def __init__(self, paths: list[Path], image_shape: tuple[int, int, int], max_open: int = 64):
        self.paths, self.shape, self.max_open = paths, image_shape, max_open
        self.row_bytes = int(np.prod(image_shape))
        self.open: OrderedDict[int, object] = OrderedDict()

    def _file(self, part: int):
        f = self.open.pop(part, None)
        if f is None:
            if len(self.open) >= self.max_open:
                self.open.popitem(last=False)[1].close()
            f = open(self.paths[part], "rb")
        self.open[part] = f  # most recently used last
        return f

    def read_into(self, parts: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[i]`` = image ``rows[i]`` of spool ``parts[i]``; read in (part, row) order so each
        file is read forwards."""
        for i in np.lexsort((rows, parts)).tolist():
            f = self._file(int(parts[i]))
            f.seek(HEADER + int(rows[i]) * self.row_bytes)
            if f.readinto(memoryview(out[i]).cast("B")) != self.row_bytes:
                raise CacheError(f"spool {self.paths[int(parts[i])]} ends early",
                                 "delete the work folder and run preprocess again")

    def close(self) -> None:
        while self.open:
            self.open.popitem()[1].close()
