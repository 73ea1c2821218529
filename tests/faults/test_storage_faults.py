"""Storage faults: kdflow's S3 traffic goes through a proxy (s3proxy.py) that throttles (503
SlowDown), fails (500), answers a conditional create with 409 ConditionalRequestConflict, drops
connections after S3 acted, cuts bodies in half and stalls past the read timeout, on a fixed
schedule. Nothing is lost, duplicated or half-written: every object reads back exactly, the
listings hold exactly the expected keys, the real steps (preprocess, teacher inference) write byte
for byte what a fault-free run writes, and a service that keeps failing ends in a StorageError
naming the URI after a bounded number of attempts."""

from __future__ import annotations

import boto3
import pytest

from kdflow.storage.s3 import S3Storage
from kdflow.storage import join, storage_for
from tests.faults.s3proxy import KINDS, FaultProxy
from tests.helpers import hang_guard, upload_folder

# The client's read timeout in these tests (KDFLOW_S3_READ_TIMEOUT), and the proxy's stall beyond it.
# Short, so a stall costs little, but scaled with the machine's load (hang_guard): an answer that a busy
# machine is merely slow to give must not read as a stall.
READ_TIMEOUT_S = 2.0
STALL_MARGIN_S = 1.0
# More attempts than the default 5: on a loaded CI machine the S3 server itself stalls now and then
# past the short read timeout, on top of the scheduled faults.
ATTEMPTS = 8
# Periods (every n-th eligible request) prime to each other, so the kinds fall on varied
# operations; rare enough that botocore's retry quota is never exhausted, frequent enough that
# each kind hits each test more than once. A stall costs a read timeout, so it is the rarest.
# "conflict" (409) falls on conditional creates only, which are few: every second one.
SCHEDULE = {"slowdown": 13, "internal": 17, "conflict": 2, "drop": 19, "delay": 70, "cut": 7}


@pytest.fixture()
def faulty_s3(s3_bucket, s3_server, monkeypatch, tmp_path):
    """(proxy, bucket): AWS_ENDPOINT_URL points at the fault proxy in front of the S3 server."""
    from kdflow.data import source, stream

    read_timeout = hang_guard(READ_TIMEOUT_S)
    proxy = FaultProxy(s3_server, SCHEDULE, delay_s=read_timeout + STALL_MARGIN_S)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.start())
    monkeypatch.setenv("KDFLOW_S3_READ_TIMEOUT", str(read_timeout))
    monkeypatch.setenv("KDFLOW_S3_MAX_ATTEMPTS", str(ATTEMPTS))
    # A listing of a few dozen keys is then several pages, so faults fall mid-listing too.
    monkeypatch.setattr(S3Storage, "page_size", 7)
    # Process-wide caches must not carry clients or shards between the proxy and the direct server.
    monkeypatch.setattr(source, "_STORES", {})
    monkeypatch.setattr(stream, "_cache", None)
    monkeypatch.setenv("KDFLOW_SHARD_CACHE", str(tmp_path / "shard-cache"))
    yield proxy, s3_bucket
    proxy.stop()


def _direct(s3_server):
    """A client on the S3 server itself, past the proxy: what is really stored."""
    return boto3.client("s3", endpoint_url=s3_server)


def _stored(s3_server, bucket: str, prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` (relative key -> bytes), read past the proxy."""
    s3 = _direct(s3_server)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    assert len(keys) == len(set(keys))
    return {k[len(prefix):]: s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}


def _all_kinds_injected(proxy: FaultProxy) -> None:
    assert set(proxy.injected) == set(KINDS), (dict(proxy.injected), proxy.log)


def test_storage_round_trips_lose_nothing(faulty_s3, s3_server):
    proxy, bucket = faulty_s3
    base = f"s3://{bucket}/objects"
    store = storage_for(base)
    # Sizes from empty to ~3 KiB; half written plainly, half created with write_if_absent.
    objects = {join(base, f"d{i % 3}", f"{i:03d}.bin"): bytes((i * 7 + j) % 251 for j in range(i * 97))
               for i in range(24)}
    created = {}
    for i, (uri, data) in enumerate(objects.items()):
        if i % 2:
            store.write_bytes(uri, data)
        else:
            created[uri] = store.write_if_absent(uri, data)
    # False from a first create is legitimate only when the create's own first attempt landed and
    # its answer was lost (a dropped or stalled response); the bytes must then be this call's.
    assert all(store.read_bytes(u) == objects[u] for u in created)

    assert store.list(base) == sorted(objects)  # every page, no key twice, no temp objects
    assert [(o.uri, o.size) for o in store.list_info(base)] == [(u, len(d)) for u, d in sorted(objects.items())]
    for uri, data in objects.items():
        assert store.read_bytes(uri) == data
        assert store.size(uri) == len(data) and store.exists(uri)
    assert not store.exists(join(base, "missing.bin"))
    # A second create of any key is refused, whatever the faults, and leaves the object unchanged.
    assert not any(store.write_if_absent(u, b"usurper") for u in objects)

    stored = _stored(s3_server, bucket, "objects/")
    assert stored == {u[len(base) + 1:]: d for u, d in objects.items()}
    _all_kinds_injected(proxy)


def _steps(data_uri: str, root: str, cfg_yaml: str, teacher: str, ref_dir) -> dict:
    from kdflow.steps.preprocess import run_preprocess
    from kdflow.steps.teacher import run_teacher_inference

    summary = run_preprocess(data_uri, cfg_yaml, f"{root}/dataset")
    ref = run_teacher_inference(f"{root}/dataset", teacher, cfg_yaml, f"{root}/cache", str(ref_dir))
    return {"summary": summary, "key": ref.cache_key, "hit": ref.cache_hit, "teacher": ref.teacher_digest}


def test_preprocess_and_teacher_steps_through_faults_match_a_clean_run(
        s3_server, s3_bucket, tiny_data, tiny_teacher, tiny_config_yaml, tmp_path, monkeypatch, request):
    # The fault-free run, straight to the S3 server.
    data_uri = upload_folder(tiny_data, s3_bucket, "raw")
    clean = _steps(data_uri, f"s3://{s3_bucket}/clean", tiny_config_yaml, tiny_teacher, tmp_path / "clean-ref")

    proxy, _ = request.getfixturevalue("faulty_s3")  # from here on, through the fault proxy
    faulty = _steps(data_uri, f"s3://{s3_bucket}/faulty", tiny_config_yaml, tiny_teacher, tmp_path / "faulty-ref")

    assert faulty == clean and clean["hit"] is False  # dataset fingerprint and counts, cache entry key
    stored_clean = _stored(s3_server, s3_bucket, "clean/")
    stored_faulty = _stored(s3_server, s3_bucket, "faulty/")
    # The same objects, byte for byte: dataset manifest and shards (their digests), the cache's view
    # shards, view manifests and entry; nothing missing, nothing extra (no temp or partial object).
    assert sorted(stored_faulty) == sorted(stored_clean)
    assert any(k.startswith("cache/") and k.endswith(".kdsl") for k in stored_clean)
    assert stored_faulty == stored_clean
    _all_kinds_injected(proxy)


def test_persistent_faults_end_in_a_storage_error_naming_the_uri(s3_server, s3_bucket, monkeypatch):
    """Retries are bounded: a service that keeps failing gives a StorageError naming the URI and
    the fix after KDFLOW_S3_MAX_ATTEMPTS, for request errors (botocore's retries) and for bodies
    that break mid-read (kdflow's own)."""
    from kdflow.util.errors import StorageError

    _direct(s3_server).put_object(Bucket=s3_bucket, Key="k/obj.bin", Body=b"x" * 1000)
    monkeypatch.setenv("KDFLOW_S3_MAX_ATTEMPTS", "2")
    for every, what, uri, why in (({"slowdown": 1}, "write", f"s3://{s3_bucket}/k/new.bin", "SlowDown"),
                                  ({"cut": 1}, "read", f"s3://{s3_bucket}/k/obj.bin", "broke mid-body")):
        proxy = FaultProxy(s3_server, every, cooldown=False)  # every request fails
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.start())
        store = storage_for(uri)
        try:
            with pytest.raises(StorageError, match=f"S3 kept failing to {what} {uri} after 2 attempts") as exc:
                store.write_bytes(uri, b"y") if what == "write" else store.read_bytes(uri)
        finally:
            proxy.stop()
        assert why in str(exc.value) and "KDFLOW_S3_MAX_ATTEMPTS" in exc.value.fix
    assert [k for k in _stored(s3_server, s3_bucket, "k/")] == ["obj.bin"]  # nothing half-written


def test_listing_survives_faults_on_its_pages(faulty_s3, s3_server, monkeypatch):
    """A listing of several pages (7 keys each) loses and repeats no key when its pages fail: each
    page failed once and retried (by botocore), or one page failing past botocore's attempts (the
    listing starts again from the first page)."""
    proxy, bucket = faulty_s3
    base = f"s3://{bucket}/listed"
    uris = [join(base, f"{i:02d}.bin") for i in range(20)]  # 3 pages
    proxy.stop()  # this test's faults are its own
    for uri in uris:
        _direct(s3_server).put_object(Bucket=bucket, Key=uri.split("/", 3)[3], Body=uri.encode())
    # A lost answer or a cut body on every other request: each page fails once (5xx answers are
    # the relisting case below).
    for kind in ("drop", "cut"):
        pages = FaultProxy(s3_server, {kind: 1})
        monkeypatch.setenv("AWS_ENDPOINT_URL", pages.start())
        try:
            assert storage_for(base).list(base) == uris
        finally:
            pages.stop()
        assert pages.injected[kind] >= 3, pages.log

    monkeypatch.setenv("KDFLOW_S3_MAX_ATTEMPTS", "2")
    relist = FaultProxy(s3_server, {})
    monkeypatch.setenv("AWS_ENDPOINT_URL", relist.start())
    try:
        store = storage_for(base)
        assert store.list(base) == uris  # also makes the pre-flight request: the count below is exact
        # The next listing: page 1 passes, page 2 fails on both of botocore's attempts.
        relist.at = {relist.requests + 2: "slowdown", relist.requests + 3: "internal"}
        first = relist.requests
        assert store.list(base) == uris
        assert relist.requests - first == 2 + 1 + 3, relist.log  # page 1, page 2 twice, then all 3 pages again
    finally:
        relist.stop()
