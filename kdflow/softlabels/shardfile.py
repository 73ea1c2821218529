"""The bytes of one view shard file: an 80-byte header, then the stored codec columns, nothing else.

An ``.npz`` spends about 230 bytes of zip and ``.npy`` headers on every array it holds; with five arrays
and the 222 rows of a 224-px dataset shard that is 6 bytes a row, more than a tenth of the labels
themselves (54 bytes at k = 10). So a view shard is one flat record::

    magic     8 bytes   b"KDSL\\x03\\0\\0\\0"
    header    8 bytes   little-endian uint32 n (rows), uint16 k, uint8 index itemsize (1, 2 or 4),
                        uint8 1 when view parameters follow
    digests  64 bytes   shard_sha256 (the dataset shard's content), ids_sha256 (its sample ids)
    values   n*k*2      float16 [n, k]  (codec.encode: the top-1 logit, then gaps from it)
    tail     n*2*2      float16 [n, 2]
    index    n*k*b      uint8/uint16/uint32 [n, k]
    params   n*5*2      int16 [n, 5]    (augmented views only)

Little-endian throughout and written in one piece, so the same labels give the same bytes (the
manifest's sha256 is a content digest, and the file's name carries it: ``view_file``). At k = 10 of
1000 classes: 54 bytes a row with parameters, 44 without, plus 80 bytes a file.
"""

from __future__ import annotations

import re
import struct

import numpy as np

MAGIC = b"KDSL\x03\x00\x00\x00"
_HEADER = struct.Struct("<IHBB")
HEADER_BYTES = len(MAGIC) + _HEADER.size + 64
PARAMS = 5  # view parameters per row (kdflow.training.augment)
_INDEX = {1: "<u1", 2: "<u2", 4: "<u4"}


NAME_DIGEST = 32  # hex characters of the file's sha256 in its name: 128 bits, no two contents share a name
_NAME = re.compile(r"^(?P<stem>[^/]+)\.(?P<digest>[0-9a-f]{%d})\.kdsl$" % NAME_DIGEST)


def shard_stem(dataset_shard_file: str) -> str:
    """The stem view shard files of a dataset shard share: ``train-00003.npz`` -> ``train-00003``."""
    return dataset_shard_file.rsplit(".", 1)[0]


def view_file(stem: str, sha256: str) -> str:
    """A view shard file's name: its stem and its content's digest, ``train-00003.<sha256[:32]>.kdsl``.

    Content-addressed, so one name never holds two different contents: two writers of the same
    shard write the same bytes to one name, or different bytes to different names, and a manifest
    that names a file can never be invalidated by another writer."""
    return f"{stem}.{sha256[:NAME_DIGEST]}.kdsl"


def parse_view_file(name: str) -> tuple[str, str] | None:
    """(stem, name digest) of a view shard file name, or None for anything else (temp files, manifests)."""
    m = _NAME.match(name)
    return (m["stem"], m["digest"]) if m else None


def pack(stored: dict[str, np.ndarray], params: np.ndarray | None, shard_sha256: str, ids_sha256: str) -> bytes:
    """``stored``: codec.encode's {"values" float16 [n, k], "tail" float16 [n, 2], "index" [n, k]}."""
    values = np.ascontiguousarray(stored["values"], dtype="<f2")
    tail = np.ascontiguousarray(stored["tail"], dtype="<f2")
    index = np.asarray(stored["index"])
    n, k = values.shape
    width = index.dtype.itemsize
    if not all(len(d) == 64 for d in (shard_sha256, ids_sha256)):
        raise ValueError("shard_sha256 and ids_sha256 must be sha256 hex digests (64 characters)")
    if width not in _INDEX or index.shape != (n, k) or tail.shape != (n, 2):
        raise ValueError(f"cannot pack index {index.dtype} {index.shape}, tail {tail.shape} with values {(n, k)}")
    parts = [MAGIC, _HEADER.pack(n, k, width, params is not None), bytes.fromhex(shard_sha256),
             bytes.fromhex(ids_sha256), values.tobytes(), tail.tobytes(),
             np.ascontiguousarray(index, dtype=_INDEX[width]).tobytes()]
    if params is not None:
        p = np.ascontiguousarray(params, dtype="<i2")
        if p.shape != (n, PARAMS):
            raise ValueError(f"view parameters {p.shape}, expected {(n, PARAMS)}")
        parts.append(p.tobytes())
    return b"".join(parts)


def unpack(raw: bytes) -> dict[str, np.ndarray | str]:
    """The arrays back (``values``, ``tail``, ``index``, and ``params`` when present) and the two
    digests as hex (``shard_sha256``, ``ids_sha256``); ValueError when the bytes are not such a file."""
    if raw[:len(MAGIC)] != MAGIC or len(raw) < HEADER_BYTES:
        raise ValueError("not a kdflow soft-label shard (bad magic or truncated header)")
    n, k, width, has_params = _HEADER.unpack_from(raw, len(MAGIC))
    if width not in _INDEX:
        raise ValueError(f"index itemsize {width}")
    at = len(MAGIC) + _HEADER.size
    out: dict[str, np.ndarray | str] = {"shard_sha256": raw[at:at + 32].hex(), "ids_sha256": raw[at + 32:at + 64].hex()}
    at = HEADER_BYTES
    layout = [("values", "<f2", k), ("tail", "<f2", 2), ("index", _INDEX[width], k)]
    if has_params:
        layout.append(("params", "<i2", PARAMS))
    expected = at + sum(n * cols * np.dtype(dt).itemsize for _, dt, cols in layout)
    if len(raw) != expected:
        raise ValueError(f"{len(raw)} bytes, expected {expected} for {n} rows")
    for name, dt, cols in layout:
        size = n * cols * np.dtype(dt).itemsize
        out[name] = np.frombuffer(raw, dtype=dt, count=n * cols, offset=at).reshape(n, cols)
        at += size
    return out
