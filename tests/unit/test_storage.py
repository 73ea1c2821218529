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


def test_list_info_gives_sizes_and_etags(tmp_path, s3_bucket):
    for base in (str(tmp_path / "store"), f"s3://{s3_bucket}/p"):
        store = storage_for(base)
        store.write_bytes(join(base, "a.bin"), b"12345")
        store.write_bytes(join(base, "d", "b.bin"), b"")
        info = store.list_info(base)
        assert [(o.uri, o.size) for o in info] == [(join(base, "a.bin"), 5), (join(base, "d", "b.bin"), 0)]
        # S3's ETag of a single-part upload is the MD5 of the bytes; local files have none.
        expected = '"827ccb0eea8a706c4c34a16891f84e7b"' if base.startswith("s3://") else None
        assert info[0].etag == expected


def test_s3_listing_follows_pagination_past_1000_keys(s3_bucket):
    """One ListObjectsV2 call returns at most 1000 keys; the rest must not be silently lost."""
    from concurrent.futures import ThreadPoolExecutor

    base = f"s3://{s3_bucket}/many"
    store = storage_for(base)
    uris = [join(base, f"{i // 100:02d}", f"{i:04d}.bin") for i in range(1005)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda u: store.write_bytes(u, b"x"), uris))
    assert store.list(base) == sorted(uris)
    assert len(store.list_info(base)) == 1005


def _creates_only_once(base: str) -> None:
    """True: this call created the object; False: one was there and is left exactly as it was."""
    store = storage_for(base)
    uri = join(base, "d", "claim.json")
    assert store.write_if_absent(uri, b"first") is True
    assert store.write_if_absent(uri, b"second") is False
    assert store.read_bytes(uri) == b"first"
    assert store.list(base) == [uri]  # no temp file left beside it, in either outcome


def test_local_write_if_absent_creates_only_once(tmp_path):
    _creates_only_once(str(tmp_path / "store"))


def test_s3_write_if_absent_creates_only_once(s3_bucket):
    _creates_only_once(f"s3://{s3_bucket}/p")


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
