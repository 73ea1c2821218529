"""The storage interface on S3: the contract the local backend keeps (tests/unit/test_storage.py), against
moto's S3 server on loopback, plus what only object storage has (missing buckets, paged listings, ETags)."""

import pytest

from kdflow.storage import join, storage_for
from kdflow.util.errors import StorageError
from tests.helpers import creates_only_once, storage_roundtrip


def test_s3_on_moto_server(s3_bucket):
    storage_roundtrip(f"s3://{s3_bucket}/prefix")


def test_s3_missing_bucket_is_a_clear_error(s3_server):
    with pytest.raises(StorageError, match="bucket .* does not exist") as exc:
        storage_for("s3://no-such-bucket-kdflow/k").write_bytes("s3://no-such-bucket-kdflow/k", b"x")
    assert "create the bucket" in str(exc.value)


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


def test_s3_write_if_absent_creates_only_once(s3_bucket):
    creates_only_once(f"s3://{s3_bucket}/p")
