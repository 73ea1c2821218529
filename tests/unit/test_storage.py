"""One interface over local folders and S3: the local half (the S3 half, against moto's S3 server on
loopback, is tests/integration/test_storage_s3.py)."""

from pathlib import Path

import pytest

from kdflow.util.errors import StorageError
from kdflow.storage import storage_for
from tests.helpers import creates_only_once, storage_roundtrip


def test_plain_local_path(tmp_path):
    storage_roundtrip(str(tmp_path / "store"))


def test_file_uri(tmp_path):
    storage_roundtrip((tmp_path / "store").as_uri())


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="unsupported storage URI 'gs://b/k'"):
        storage_for("gs://b/k")


def test_local_write_is_atomic_on_failure(tmp_path, monkeypatch):
    """A write that dies half-way leaves the old object intact and no temp file behind."""
    import os

    store = storage_for(str(tmp_path))
    target = tmp_path / "obj.bin"
    store.write_bytes(str(target), b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes(str(target), b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in Path(tmp_path).iterdir()] == ["obj.bin"]


def test_local_write_if_absent_creates_only_once(tmp_path):
    creates_only_once(str(tmp_path / "store"))


def test_local_write_if_absent_has_one_winner_among_racers(tmp_path):
    """Threads racing to create one file: exactly one wins, and the file holds the winner's bytes whole."""
    from concurrent.futures import ThreadPoolExecutor

    store = storage_for(str(tmp_path))
    uri = str(tmp_path / "key")
    payloads = [bytes([i]) * 100_000 for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        won = list(pool.map(lambda data: store.write_if_absent(uri, data), payloads))
    assert won.count(True) == 1
    assert store.read_bytes(uri) == payloads[won.index(True)]
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
