"""One interface over local folders and S3; the S3 half runs against moto's S3 server on loopback."""

from pathlib import Path

import pytest

from kdflow.errors import StorageError
from kdflow.storage import join, storage_for


def _roundtrip(base: str) -> None:
    store = storage_for(base)
    a, b = join(base, "x", "a.bin"), join(base, "x", "deep", "b.bin")
    assert not store.exists(a) and store.size(a) is None
    store.write_bytes(a, b"alpha")
    store.write_bytes(b, b"beta!")
    store.write_bytes(a, b"alpha2")  # overwrite
    assert store.read_bytes(a) == b"alpha2" and store.size(b) == 5 and store.exists(b)
    assert store.list(join(base, "x")) == sorted([a, b])
    assert store.list(join(base, "nothing-here")) == []
    store.delete(a)
    assert not store.exists(a) and store.list(join(base, "x")) == [b]
    with pytest.raises(StorageError, match="does not exist"):
        store.read_bytes(a)


def test_plain_local_path(tmp_path):
    _roundtrip(str(tmp_path / "store"))


def test_file_uri(tmp_path):
    _roundtrip((tmp_path / "store").as_uri())


def test_s3_on_moto_server(s3_bucket):
    _roundtrip(f"s3://{s3_bucket}/prefix")


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(StorageError, match="bucket .* does not exist") as exc:
        storage_for("s3://no-such-bucket-kdflow/k").write_bytes("s3://no-such-bucket-kdflow/k", b"x")
    assert "create the bucket" in str(exc.value)


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
