"""The soft-label cache under concurrent runs of one key, lost commit races and corrupt shards.

Real processes: ``worker`` runs in fresh interpreters (``python -c``), several at once, each labelling
and committing the SAME cache entry against a local folder or the S3 server (moto, on loopback). They
really overlap: each waits, after its first labelled shard, until every worker has labelled one (so
they write the same shard names at the same time), and again before committing (so they race for the
same manifest generations). The waits are barriers on files, with a generous hang guard, never sleeps
that a slow machine could outrun.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from kdflow.config import AugmentConfig
from kdflow.data.manifest import ChannelStats, PreprocessReport, PreprocessSpec, SplitInfo
from kdflow.data.shards import DatasetManifest, SplitArrays, write_split_shards
from kdflow.util.errors import CacheError
from kdflow.softlabels import views
from kdflow.softlabels.cache import EntrySpec, SoftLabelCache
from kdflow.softlabels.codec import compress
from kdflow.softlabels.shardfile import parse_view_file
from kdflow.storage import join
from tests.helpers import hang_guard

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 180  # a guard against a hung worker (hang_guard scales it), not a speed limit
WORKERS = 2  # an early committer and a late labeller (see worker)
AUG = AugmentConfig(crop="pad", padding=2, views=1)


def make_dataset(root: Path) -> DatasetManifest:
    """6 + 2 + 2 shards of 4 rows, 3 classes, written directly (no image decoding)."""
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    splits = {}
    for split, n in {"train": 24, "val": 8, "test": 8}.items():
        arrays = SplitArrays(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, n).astype(np.int64),
                             np.array([f"{split}-{i:06d}" for i in range(n)]))
        splits[split] = SplitInfo(n, tuple(np.bincount(arrays.labels, minlength=3).tolist()),
                                  tuple(write_split_shards(str(root), split, arrays, 4)))
    spec = PreprocessSpec(8, 3, "squash", "bilinear", {"synthetic": 0})
    DatasetManifest.build(str(root), "synthetic", spec, names, splits, ChannelStats((0.5,) * 3, (0.25,) * 3),
                          PreprocessReport(40, 0, 0, 40, 1, 0)).write()
    return DatasetManifest.open(str(root))


def entry_spec(dataset: DatasetManifest) -> EntrySpec:
    return EntrySpec("teacher", dataset, 10, tuple(views.plan(AUG, 1)))  # the plain view and one augmented


class Teacher:
    """Deterministic logits from the pixels and view params (same shard, same bytes, in any process)."""

    def __init__(self, shift: float = 0.0):
        self.calls, self.shift = 0, shift
        self.proj = torch.randn(3, 3, generator=torch.Generator().manual_seed(7)) * 4

    def __call__(self, images_u8, params):
        self.calls += 1
        x = torch.from_numpy(images_u8).float().mean(dim=(1, 2)) / 64
        if params is not None:
            x = x + torch.from_numpy(params[:, :3]).float() / 16
        return compress(x @ self.proj + self.shift, 10)


def barrier(sync: Path, name: str, me: int, n: int) -> None:
    """Wait until all ``n`` workers reached ``name`` (a hang guard fails a worker that waits too long)."""
    (sync / f"{name}-{me}").touch()
    deadline = time.monotonic() + hang_guard(HANG_S)
    while len(list(sync.glob(f"{name}-*"))) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"barrier {name}: the other workers never came")
        time.sleep(0.01)


def wait_for(sync: Path, name: str) -> None:
    """Wait until some worker touched ``name`` (the same hang guard as ``barrier``)."""
    deadline = time.monotonic() + hang_guard(HANG_S)
    while not (sync / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: never came")
        time.sleep(0.01)


PAUSE_AT = 8  # teacher calls (of 16) the late labeller makes before it waits for the other's read-back


def worker(args_json: str) -> None:
    """One run of teacher labelling + commit for the shared key (in a subprocess); writes its result.

    Worker 0 commits early, worker 1 labels late. The interleaving that lost updates under the old
    in-place layout (shard files at fixed names, one ``manifest.json`` written last) is forced:

    1. both label at once (a barrier after each one's 2nd shard, so each listed the views before the
       other wrote more than its first shards: each labels nearly every shard itself);
    2. worker 1 pauses mid-labelling until worker 0 has read back every shard file for its commit
       (commit() reads them all before its first conditional create), then labels the rest: shards
       worker 0 labelled too, in other bytes of the same size, written AFTER worker 0 took their
       digests. (Both commits reading back after both finished labelling would read the same bytes
       and hide the flaw.)
    3. worker 0 creates nothing until worker 1 has committed: both listed the views with no
       manifest, both try each view's generation 0 after both finished labelling, and worker 0
       must lose each one, holding a body that may name other files than the winner's.

    Every conditional create of the commit is recorded (name, created?, sha256 of the bytes offered)
    and returned with the entry.
    """
    args = json.loads(args_json)
    spec = entry_spec(DatasetManifest.open(args["dataset"]))
    cache = SoftLabelCache(args["cache"])
    sync, me, n = Path(args["sync"]), args["me"], args["n"]
    teacher = Teacher(shift=0.5 * me)  # as two GPUs: same shapes and sizes, different bytes
    creates: list[tuple[str, bool, str]] = []
    real_create = cache.store.write_if_absent

    def create(uri: str, data: bytes) -> bool:
        if me == 0 and not creates:
            (sync / "read-back-0").touch()
            wait_for(sync, "committed-1")
        created = real_create(uri, data)
        creates.append((uri[len(cache.root.rstrip("/")) + 1:], created, hashlib.sha256(data).hexdigest()))
        return created

    def infer(images, params):
        if me == 1 and teacher.calls == PAUSE_AT:
            wait_for(sync, "read-back-0")
        out = teacher(images, params)
        if teacher.calls == 2:  # every worker is mid-labelling at once, writing the same shards
            barrier(sync, "labelling", me, n)
        return out

    stats = cache.label_part(spec, infer)
    cache.store.write_if_absent = create  # on the instance: commit() and commit_next() call it there
    entry, commit_stats = cache.commit(spec, teacher_uri="t")
    if me == 1:
        (sync / "committed-1").touch()
    Path(args["out"]).write_text(json.dumps({"entry": entry.to_dict(), "label": stats, "commit": commit_stats,
                                             "creates": creates}))


def run_workers(dataset: DatasetManifest, cache_uri: str, tmp: Path) -> list[dict]:
    sync = tmp / "sync"
    sync.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = []
    for me in range(WORKERS):
        args = {"dataset": str(dataset.root), "cache": cache_uri, "sync": str(sync), "me": me, "n": WORKERS,
                "out": str(tmp / f"out-{me}.json")}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.faults.test_cache_concurrency import worker; "
                                   "worker(sys.argv[1])", json.dumps(args)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=hang_guard(HANG_S))[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return [json.loads((tmp / f"out-{me}.json").read_text()) for me in range(WORKERS)]


def assert_one_sound_entry(cache: SoftLabelCache, spec: EntrySpec, dataset: DatasetManifest) -> dict[str, str]:
    """One entry, and one manifest generation per view naming files whose bytes hash to the recorded
    digests; every file in a view's folder is named by its bytes' digest (each worker may leave its
    own copy of a shard, never a torn or overwritten one); verify passes and every shard loads with
    its dataset shard's ids. Returns {view key: sha256 of its generation 0's bytes}."""
    store = cache.store
    assert store.list(join(cache.root, "softlabels", "v5", "entries")) == [cache.entry_uri(spec.key)]
    units = {s: len(info.shards) for s, info in dataset.splits.items()}
    gen0, copies = {}, 0
    for view in spec.views:
        vkey = spec.view_key(view)
        listed = [u[len(cache.view_uri(vkey)) + 1:] for u in store.list(cache.view_uri(vkey))]
        # One generation: the loser read the winner's manifest and used it, committing none of its own.
        assert [u for u in listed if u.startswith("manifests/")] == ["manifests/00000000.json"]
        gen0[vkey] = hashlib.sha256(store.read_bytes(join(cache.manifests_uri(vkey), "00000000.json"))).hexdigest()
        shards = [u for u in listed if not u.startswith("manifests/")]
        stems = {}
        for name in shards:
            stem, digest = parse_view_file(name)  # no temp file or stray name left behind
            assert hashlib.sha256(store.read_bytes(join(cache.view_uri(vkey), name))).hexdigest()[:32] == digest
            stems.setdefault(stem, []).append(name)
        covered = sum(n for s, n in units.items() if view.covers(s))
        assert len(stems) == covered and all(len(names) <= WORKERS for names in stems.values())
        copies += len(shards) - covered
        manifest = cache.view_manifest(vkey)
        for split in manifest.splits.values():
            for shard in split.shards:
                raw = store.read_bytes(join(cache.view_uri(vkey), shard.file))
                assert parse_view_file(shard.file)[1] == shard.sha256[:32]  # the name's digest...
                assert len(raw) == shard.size and hashlib.sha256(raw).hexdigest() == shard.sha256  # ...the bytes
    assert copies > 0  # the workers really put different bytes for one shard (as two GPUs would)
    assert cache.verify(spec) == []
    fresh = SoftLabelCache(cache.root)
    for split, count in units.items():
        for index in range(count):
            ids = dataset.read_shard(split, index).ids
            assert fresh.load_shard(spec.key, split, index, ids).values.shape[0] == len(ids)  # digest, alignment
            if split == "train":
                assert fresh.load_shard(spec.key, split, index, ids, augmented=True).num_views == 1
    return gen0


def _concurrent(dataset: DatasetManifest, cache_uri: str, tmp: Path) -> None:
    """Two runs of one key, each with other teacher bytes, in the interleaving ``worker`` describes.

    Which run creates generation 0 is forced (worker 1), not left to the store: moto's
    ``If-None-Match: *`` is a check, then a put, in a threaded server, not atomic, so two truly
    simultaneous creates could both "succeed" there. On the S3 variant the exclusivity of a
    simultaneous create is therefore the protocol's safety net (each creator's manifest names only
    read-back, content-addressed files nobody overwrites, so whichever survives is sound), not the
    store's; the local variant's os.link is atomic. A create that follows a finished one, as here,
    fails on both (412 PreconditionFailed, EEXIST).
    """
    results = run_workers(dataset, cache_uri, tmp)
    spec, cache = entry_spec(dataset), SoftLabelCache(cache_uri)
    total = 10 + 6  # the plain view of 10 dataset shards, the augmented view of train's 6
    # They really overlapped: each labelled the shards it found missing, which (with the barrier
    # after its second shard) includes shards the other was writing at the same time.
    assert all(r["label"]["shards_labelled"] >= 2 for r in results)
    assert sum(r["label"]["shards_labelled"] for r in results) > total
    gen0 = [join("softlabels", "v5", "views", spec.view_key(v), "manifests", "00000000.json") for v in spec.views]
    # The race was real: worker 1 created every view's generation 0 and the entry; worker 0, which
    # had listed the views empty and read its shards back before that, then tried each generation 0
    # and lost every one (and found the entry there: nothing to create).
    early, late = ([(name, ok) for name, ok, _ in r["creates"]] for r in results)
    assert late == [(name, True) for name in gen0] + [(cache.entry_uri(spec.key)[len(cache_uri) + 1:], True)]
    assert early == [(name, False) for name in gen0]
    assert results[0]["commit"] == {"views_computed": len(spec.views), "views_reused": 0}
    stored = json.loads(cache.store.read_bytes(cache.entry_uri(spec.key)))
    assert all(r["entry"] == stored for r in results)  # every run returns the one committed entry
    views = assert_one_sound_entry(cache, spec, dataset)
    # The winner's manifests are there byte for byte: the loser overwrote nothing.
    assert [views[spec.view_key(v)] for v in spec.views] == [sha for _, _, sha in results[1]["creates"][:-1]]


@pytest.fixture()
def dataset(tmp_path):
    return make_dataset(tmp_path / "ds")


def test_concurrent_runs_of_one_key_end_with_one_sound_entry_local(dataset, tmp_path):
    _concurrent(dataset, str(tmp_path / "cache"), tmp_path)


def test_concurrent_runs_of_one_key_end_with_one_sound_entry_s3(dataset, tmp_path, s3_bucket):
    _concurrent(dataset, f"s3://{s3_bucket}/kd", tmp_path)


def test_a_lost_commit_race_reads_the_winner_and_overwrites_nothing(dataset, tmp_path, monkeypatch):
    """A run that listed the view before another committed it (so it tries the same generation) loses
    the conditional write, reads the winner's manifest, verifies it and uses it; the winner's
    manifests and entry are left byte for byte."""
    spec = entry_spec(dataset)
    winner = SoftLabelCache(str(tmp_path / "c"))
    winner.write(spec, Teacher(), teacher_uri="winner")
    before = {p: p.read_bytes() for p in Path(winner.root).rglob("*.json")}

    late = SoftLabelCache(winner.root)
    store, created, hidden = late.store, [], [True]
    real_list, real_exists, real_create = store.list_info, store.exists, store.write_if_absent
    # What it saw before the winner committed: the shard files, no manifest, no entry; until its
    # own conditional write of the entry, the last thing a commit does.
    monkeypatch.setattr(store, "list_info",
                        lambda prefix: [o for o in real_list(prefix) if not (hidden[0] and o.uri.endswith(".json"))])
    monkeypatch.setattr(store, "exists", lambda uri: not (hidden[0] and uri.endswith(".json")) and real_exists(uri))

    def create(uri, data):
        created.append((uri, real_create(uri, data)))
        hidden[0] = uri != late.entry_uri(spec.key)
        return created[-1][1]

    monkeypatch.setattr(store, "write_if_absent", create)
    entry, stats = late.commit(spec, teacher_uri="loser")
    assert [ok for _, ok in created] == [False] * (len(spec.views) + 1)  # every view's gen 0, then the entry's
    assert [u for u, _ in created] == [join(late.manifests_uri(spec.view_key(v)), "00000000.json")
                                       for v in spec.views] + [late.entry_uri(spec.key)]
    assert entry.teacher_uri == "winner" and stats["views_computed"] == len(spec.views)
    assert {p: p.read_bytes() for p in Path(winner.root).rglob("*.json")} == before


def test_a_generation_that_does_not_verify_is_passed_over(dataset, tmp_path):
    """Garbage at a view's generation 0 (a foreign or damaged manifest) is not used and not
    overwritten: the commit takes generation 1, and readers use it."""
    spec = entry_spec(dataset)
    cache = SoftLabelCache(str(tmp_path / "c"))
    cache.label_part(spec, Teacher())
    plain = spec.view_key(spec.views[0])
    garbage = join(cache.manifests_uri(plain), "00000000.json")
    cache.store.write_bytes(garbage, b'{"format": "kdflow.softlabels/5", "key": "%s", "splits": 7}' % plain.encode())
    cache.commit(spec)
    assert cache.store.read_bytes(garbage).startswith(b'{"format"')
    assert cache.store.exists(join(cache.manifests_uri(plain), "00000001.json"))
    assert cache.view_manifest(plain).to_dict() == json.loads(cache.store.read_bytes(join(cache.manifests_uri(plain),
                                                                                "00000001.json")))
    assert cache.verify(spec) == []


def test_a_damaged_entry_is_replaced(dataset, tmp_path):
    """An entry that does not read is a miss, and the next commit replaces it (any sound entry of a key
    names the same views, so no reader can be misled)."""
    spec = entry_spec(dataset)
    cache = SoftLabelCache(str(tmp_path / "c"))
    cache.write(spec, Teacher())
    cache.store.write_bytes(cache.entry_uri(spec.key), b"\x00garbage")
    assert cache.lookup(spec.key) is None and cache.committed(spec.key)
    teacher = Teacher()
    entry, stats = cache.write(spec, teacher)
    assert teacher.calls == 0 and stats["views_computed"] == 0  # the views were sound: reused as they are
    assert SoftLabelCache(cache.root).lookup(spec.key) == entry and cache.verify(spec) == []


def test_healing_with_other_bytes_commits_the_next_generation(dataset, tmp_path):
    """A corrupt shard relabelled to different bytes (a GPU's labels need not be bit-identical) gets
    a new name; the view's next manifest names it, and the entry reads clean."""
    spec = entry_spec(dataset)
    cache = SoftLabelCache(str(tmp_path / "c"))
    cache.write(spec, Teacher())
    plain = spec.view_key(spec.views[0])
    shard = cache.view_manifest(plain).splits["val"].shards[1]
    uri = join(cache.view_uri(plain), shard.file)
    raw = bytearray(cache.store.read_bytes(uri))
    raw[100] ^= 0x01
    cache.store.write_bytes(uri, bytes(raw))
    assert cache.verify(spec) == [f"view {plain[:12]}: shard {shard.file} is corrupt or not of its dataset shard"]
    again = Teacher(shift=0.5)
    _, stats = cache.write(spec, again)
    assert again.calls == 1 and stats == {"views_computed": 1, "views_reused": 1}
    fixed = cache.view_manifest(plain).splits["val"].shards[1]
    assert fixed.file != shard.file and cache.store.exists(join(cache.manifests_uri(plain), "00000001.json"))
    assert cache.verify(spec) == []
    SoftLabelCache(cache.root).load_split(spec.key, "val", dataset.load_split("val").ids)


def test_a_corrupt_or_missing_shard_is_reported_refused_and_relabelled(tmp_path, tiny_data, tiny_teacher,
                                                                      tiny_config_yaml, monkeypatch):
    """The teacher step on real data: one committed shard's bytes corrupted in place (same size), another
    deleted. lookup/verify report them, reading refuses them, and the step run again relabels those
    two shards alone; the entry then reads clean and is the one first committed."""
    import logging

    from kdflow.config import Config
    from kdflow.data.preprocess import preprocess
    from kdflow.steps.teacher import prepare, run_teacher_inference

    config = tiny_config_yaml.replace("data: {", "data: {shard_size: 8, ")
    data = str(preprocess(str(tiny_data), str(tmp_path / "ds"), Config.from_yaml(config).data).root)
    cache_uri = str(tmp_path / "cache")
    labelled = []
    real_label = SoftLabelCache.label_part
    monkeypatch.setattr(SoftLabelCache, "label_part",
                        lambda self, *a, **k: labelled.append(real_label(self, *a, **k)) or labelled[-1])
    first = run_teacher_inference(data, tiny_teacher, config, cache_uri, str(tmp_path / "r1"))
    job = prepare(data, tiny_teacher, config, cache_uri)
    cache, spec = job.cache, job.spec
    before = {p.relative_to(cache_uri): p.read_bytes() for p in Path(cache_uri).rglob("*") if p.is_file()}

    plain, augmented = (spec.view_key(v) for v in spec.views[:2])
    bad = cache.view_manifest(plain).splits["test"].shards[0]
    gone = cache.view_manifest(augmented).splits["train"].shards[2]
    bad_uri = join(cache.view_uri(plain), bad.file)
    raw = bytearray(cache.store.read_bytes(bad_uri))
    raw[-3] ^= 0xFF
    cache.store.write_bytes(bad_uri, bytes(raw))
    assert SoftLabelCache(cache_uri).lookup(spec.key) is not None  # same size: the cheap check passes...
    assert [p for p in cache.verify(spec) if bad.file in p]  # ...the full one does not
    dataset = DatasetManifest.open(data)
    with pytest.raises(CacheError, match="fails its digest check") as err:
        SoftLabelCache(cache_uri).load_shard(spec.key, "test", 0, dataset.read_shard("test", 0).ids)
    assert "re-run teacher inference" in err.value.fix

    cache.store.delete(join(cache.view_uri(augmented), gone.file))
    assert SoftLabelCache(cache_uri).lookup(spec.key) is None  # a missing shard: not complete
    problems = cache.verify(spec)
    assert any(gone.file in p and "missing" in p for p in problems) and any(bad.file in p for p in problems)

    warned = []
    handler = logging.Handler()
    handler.emit = lambda record: warned.append(record.getMessage())
    logging.getLogger("kdflow.steps.teacher").addHandler(handler)
    try:
        labelled.clear()
        again = run_teacher_inference(data, tiny_teacher, config, cache_uri, str(tmp_path / "r2"))
    finally:
        logging.getLogger("kdflow.steps.teacher").removeHandler(handler)
    assert [s["shards_labelled"] for s in labelled] == [2]  # those two shards, nothing else
    assert any("damaged" in w and bad.file in w and gone.file in w for w in warned), warned
    assert not again.cache_hit and again.cache_key == first.cache_key
    assert cache.verify(spec) == []
    after = {p.relative_to(cache_uri): p.read_bytes() for p in Path(cache_uri).rglob("*") if p.is_file()}
    assert after == before  # CPU labels are bit-identical: the same files, the same (first) manifests
    third = run_teacher_inference(data, tiny_teacher, config, cache_uri, str(tmp_path / "r3"))
    assert third.cache_hit
