"""Streaming reads: verified shards read ahead with bounded memory, a disk cache for remote shards,
and ShardBatches equal in behaviour to ArrayBatches (resume, rank slices, prediction)."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np
import pytest
import torch

from kdflow.config import AugmentConfig, TrainConfig
from kdflow.data import stream
from kdflow.data.manifest import ChannelStats, PreprocessReport, PreprocessSpec, SplitInfo
from kdflow.data.shards import DatasetManifest, SplitArrays, write_split_shards
from kdflow.util.errors import ConfigError, DataError
from kdflow.models import Classifier, create_model
from kdflow.softlabels.cache import EntrySpec, SoftLabelCache
from kdflow.softlabels.codec import compress
from kdflow.softlabels.views import plan
from kdflow.storage import local_path, register_scheme
from kdflow.storage.local import LocalStorage
from kdflow.training import streaming
from kdflow.training.batches import ArrayBatches
from kdflow.training.streaming import ShardBatches, make_batches
from kdflow.training.predict import predict
from tests.helpers import count_device_reads

CPU = torch.device("cpu")
AUG = AugmentConfig(crop="pad", padding=2, flip=True)


def _dataset(root, n=50, shard_size=7, size=6, split="train") -> DatasetManifest:
    """A generated dataset: ``n`` random 6-px images in shards of ``shard_size`` (the last one short)."""
    rng = np.random.default_rng(n)
    arrays = SplitArrays(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 3, n),
                         np.array([f"{i:016x}" for i in range(n)]))
    entries = write_split_shards(str(root), split, arrays, shard_size)
    info = SplitInfo(n, tuple(np.bincount(arrays.labels, minlength=3).tolist()), tuple(entries))
    DatasetManifest.build(str(root), "generated", PreprocessSpec(size, 3, "squash", "bilinear", {}), ["a", "b", "c"],
                          {split: info}, ChannelStats((0.5,) * 3, (0.25,) * 3),
                          PreprocessReport(n, 0, 0, n, 1, 0)).write()
    return DatasetManifest.open(str(root))


def _infer(images_u8, params):
    """A deterministic stand-in teacher: 'logits' from each picture's (view's) channel means."""
    x = torch.from_numpy(images_u8).float().mean(dim=(1, 2))  # [n, 3]
    if params is not None:
        x = x + torch.from_numpy(params[:, :2]).float().sum(1, keepdim=True)  # labels differ per view
    return compress(x, k=3)


def _cached(ds: DatasetManifest, root) -> tuple[SoftLabelCache, str]:
    """A soft-label cache entry of ``ds`` with the plain view and 2 augmented views."""
    cache = SoftLabelCache(str(root))
    spec = EntrySpec("t", ds, 3, tuple(plan(AUG, 2)))
    cache.write(spec, _infer)
    return cache, spec.key


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "teacher_soft":
            for name in ("values", "index", "tail_lse", "tail_mean"):
                assert torch.equal(getattr(a[key], name), getattr(b[key], name)), name
        else:
            assert torch.equal(a[key], b[key]), key


def _sources(tmp_path, kind: str):
    """(dataset, batches factory) for 'fresh' (augmented on the fly) or 'replay' (cached views)."""
    ds = _dataset(tmp_path)
    if kind == "fresh":
        return ds, lambda cls: (ArrayBatches(ds.load_split("train"), 8, CPU, augmentation=AUG) if cls is ArrayBatches
                                else ShardBatches(ds, "train", 8, CPU, augmentation=AUG, shuffle_shards=3))
    cache, key = _cached(ds, tmp_path / "cache")
    soft = cache.load_split(key, "train", ds.load_split("train").ids, augmented=True)
    per_shard = streaming.shard_soft_labels(cache, key, "train", augmented=True)
    return ds, lambda cls: (ArrayBatches(ds.load_split("train"), 8, CPU, soft, AUG) if cls is ArrayBatches
                            else ShardBatches(ds, "train", 8, CPU, per_shard, AUG, shuffle_shards=3))


# -- shards ---------------------------------------------------------------------------------------

def test_iter_shards_reads_in_order_and_from_a_start(tmp_path):
    ds = _dataset(tmp_path)
    whole = ds.load_split("train")
    assert ds.shard_counts("train") == [7] * 7 + [1]
    got = list(ds.iter_shards("train"))
    assert np.array_equal(np.concatenate([s.images for s in got]), whole.images)
    tail = list(ds.iter_shards("train", start=1, order=[3, 0, 5]))
    assert [s.ids[0] for s in tail] == [whole.ids[0], whole.ids[35]]


def test_a_corrupt_shard_raises_its_data_error_at_that_shard(tmp_path):
    ds = _dataset(tmp_path)
    bad = local_path(str(tmp_path)) / ds.splits["train"].shards[2].file
    bad.write_bytes(bad.read_bytes()[:-1] + b"x")
    seen = []
    with pytest.raises(DataError, match="does not match its manifest digest"):
        for shard in ds.iter_shards("train", prefetch=3):
            seen.append(shard)
    assert len(seen) == 2
    with pytest.raises(DataError):
        ds.read_shard("train", 2)


def _read_ahead_threads() -> int:
    return sum(t.name == "kdflow-read-ahead" and t.is_alive() for t in threading.enumerate())


def test_the_read_ahead_thread_stops_when_the_consumer_stops(tmp_path, monkeypatch):
    ds = _dataset(tmp_path, n=200, shard_size=5)
    reads = []
    real = DatasetManifest.read_shard
    monkeypatch.setattr(DatasetManifest, "read_shard", lambda self, split, i: reads.append(i) or real(self, split, i))
    it = ds.iter_shards("train", prefetch=2)
    for i, _ in enumerate(it):
        if i == 3:
            break
    it.close()
    assert _read_ahead_threads() == 0
    assert len(reads) <= 4 + 2 + 1  # consumed, queued, and the one being read when it stopped
    batches = ShardBatches(ds, "train", 4, CPU, prefetch=2)
    for step, _ in enumerate(batches.batches(epoch=0)):
        if step == 2:
            break
    assert _read_ahead_threads() == 0


class _CountingS3(LocalStorage):
    """A remote scheme served from a local folder, counting reads (what a download would cost)."""

    reads: list[str] = []

    def read_bytes(self, uri):
        _CountingS3.reads.append(uri)
        return super().read_bytes(uri.replace("fakes3://", "/", 1))

    def exists(self, uri):
        return super().exists(uri.replace("fakes3://", "/", 1))


def test_remote_shards_are_downloaded_once_into_a_bounded_disk_cache(tmp_path, monkeypatch):
    register_scheme("fakes3")(_CountingS3)
    _dataset(tmp_path / "ds")
    monkeypatch.setenv(stream.CACHE_DIR_ENV, str(tmp_path / "cache"))
    ds = DatasetManifest.open("fakes3://" + str(tmp_path / "ds").lstrip("/"))
    assert ds.remote
    _CountingS3.reads.clear()
    first = [s.ids for s in ds.iter_shards("train")]
    assert len([u for u in _CountingS3.reads if u.endswith(".npz")]) == 8
    again = [s.ids for s in ds.iter_shards("train")]  # a later epoch: read from the local disk
    assert len([u for u in _CountingS3.reads if u.endswith(".npz")]) == 8
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    # A damaged local copy is not trusted: downloaded again.
    digest = ds.splits["train"].shards[0].sha256
    (tmp_path / "cache" / f"{digest}.npz").write_bytes(b"junk")
    assert np.array_equal(ds.read_shard("train", 0).ids, first[0])
    assert len([u for u in _CountingS3.reads if u.endswith(".npz")]) == 9
    # The size bound evicts the least recently used shards as new ones arrive.
    one = (tmp_path / "cache" / f"{digest}.npz").stat().st_size
    monkeypatch.setenv(stream.CACHE_DIR_ENV, str(tmp_path / "small"))
    monkeypatch.setenv(stream.CACHE_BYTES_ENV, str(3 * one))
    list(ds.iter_shards("train", prefetch=0))
    assert stream.shard_cache().total_bytes() <= 3 * one
    kept = {p.stem for p in (tmp_path / "small").glob("*.npz")}
    assert kept == {s.sha256 for s in ds.splits["train"].shards[-3:]}


# -- ShardBatches --------------------------------------------------------------------------------

def test_a_shuffled_pass_visits_every_row_once_and_is_deterministic_per_epoch(tmp_path):
    ds = _dataset(tmp_path)
    batches = ShardBatches(ds, "train", 8, CPU, shuffle_shards=3)
    assert batches.steps_per_epoch() == 6 and len(batches) == 50

    def rows(epoch):
        return torch.cat([b["rows"] for b in batches.batches(epoch=epoch, seed=3)])

    r0 = rows(0)
    assert len(r0) == 48 and len(set(r0.tolist())) == 48  # 2 rows of the short last batch dropped
    assert torch.equal(r0, rows(0))
    assert not torch.equal(r0, rows(1))
    assert not torch.equal(r0, torch.sort(r0).values)
    whole = ds.load_split("train")
    first = next(batches.batches(epoch=0, seed=3))
    assert torch.equal(first["label"], torch.from_numpy(whole.labels[first["rows"].numpy()]))
    plain = torch.from_numpy(whole.images[first["rows"].numpy()]).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(first["image"], plain)  # no augmentation: the plain pictures
    in_order = torch.cat([b["rows"] for b in batches.batches()])
    assert torch.equal(in_order, torch.arange(50))  # in order, nothing dropped


@pytest.mark.parametrize("cls", [ArrayBatches, ShardBatches])
@pytest.mark.parametrize("kind", ["fresh", "replay"])
def test_resuming_at_a_step_gives_the_tail_of_an_uninterrupted_pass(tmp_path, cls, kind):
    _, make = _sources(tmp_path, kind)
    batches = make(cls)
    full = list(batches.batches(epoch=2, seed=5))
    assert len(full) == 6
    for start in (1, 4, 5, 6):
        tail = list(make(cls).batches(epoch=2, seed=5, start_step=start))
        assert len(tail) == len(full) - start
        for a, b in zip(tail, full[start:]):
            _same(a, b)


@pytest.mark.parametrize("cls", [ArrayBatches, ShardBatches])
@pytest.mark.parametrize("kind", ["fresh", "replay"])
def test_rank_slices_concatenate_to_the_one_process_batch(tmp_path, cls, kind):
    _, make = _sources(tmp_path, kind)
    batches = make(cls)
    whole = list(batches.batches(epoch=1, seed=2))
    for world in (2, 4):
        parts = [list(batches.batches(epoch=1, seed=2, rank=r, world=world)) for r in range(world)]
        assert all(len(p) == len(whole) for p in parts)
        for step, global_batch in enumerate(whole):
            for key in global_batch:
                if key == "teacher_soft":
                    got = torch.cat([p[step][key].values for p in parts])
                    assert torch.equal(got, global_batch[key].values)
                else:
                    assert torch.equal(torch.cat([p[step][key] for p in parts]), global_batch[key]), key
        assert all(len(p[0]["label"]) == 8 // world for p in parts)
    with pytest.raises(ConfigError, match="divisible by 3"):
        next(batches.batches(epoch=0, world=3))


def test_replayed_views_pair_each_picture_with_the_labels_of_that_view(tmp_path):
    ds, make = _sources(tmp_path, "replay")
    soft = SoftLabelCache(str(tmp_path / "cache")).load_split(EntrySpec("t", ds, 3, tuple(plan(AUG, 2))).key,
                                                              "train", ds.load_split("train").ids, augmented=True)
    batch = next(make(ShardBatches).batches(epoch=0, seed=1))
    rows, views = batch["rows"], batch["views"]
    assert torch.equal(batch["teacher_soft"].values, soft.values[rows, views])
    assert set(views.tolist()) <= {0, 1}
    # In-order passes show the plain picture and carry no labels of augmented views.
    assert "teacher_soft" not in next(make(ShardBatches).batches())


def test_predict_over_streamed_batches_equals_predict_over_the_resident_split(tmp_path):
    ds = _dataset(tmp_path)
    torch.manual_seed(0)
    model = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    streamed = ShardBatches(ds, "train", 16, CPU)
    resident = ArrayBatches(ds.load_split("train"), 16, CPU)
    assert torch.equal(predict(model, streamed), predict(model, resident))
    assert torch.equal(streamed.labels, resident.labels) and np.array_equal(streamed.ids, resident.ids)


def test_memory_stays_bounded_whatever_the_number_of_shards(tmp_path, monkeypatch):
    alive = {"now": 0, "peak": 0}
    real = DatasetManifest.read_shard

    lock = threading.Lock()  # shards are read on the read-ahead thread and freed on this one

    def freed():
        with lock:
            alive["now"] -= 1

    def counted(self, split, index):
        gc.collect()  # a shard only held by cyclic garbage is not alive; collect it before counting
        out = real(self, split, index)
        with lock:
            alive["now"] += 1
            alive["peak"] = max(alive["peak"], alive["now"])
        weakref.finalize(out, freed)
        return out

    calls = []
    real_soft = SoftLabelCache.load_shard
    monkeypatch.setattr(SoftLabelCache, "load_shard",
                        lambda self, *a, **kw: calls.append(a[2]) or real_soft(self, *a, **kw))

    def peak(n_shards):
        ds = _dataset(tmp_path / str(n_shards), n=5 * n_shards, shard_size=5)
        cache, key = _cached(ds, tmp_path / f"cache{n_shards}")
        monkeypatch.setattr(DatasetManifest, "read_shard", counted)
        batches = ShardBatches(ds, "train", 4, CPU, streaming.shard_soft_labels(cache, key, "train", True), AUG,
                               shuffle_shards=2, prefetch=2)
        alive["peak"] = alive["now"] = 0
        calls.clear()
        steps = sum(1 for _ in batches.batches(epoch=0))
        monkeypatch.setattr(DatasetManifest, "read_shard", real)
        assert steps == batches.steps_per_epoch()
        assert sorted(calls) == list(range(n_shards))  # each shard's labels loaded once
        return alive["peak"]

    small, large = peak(8), peak(32)
    # A window of 2 shards, 2 read ahead and 1 being read, with 8 shards as with 32 (how many of the
    # read-ahead slots are full at the peak depends on thread timing, so only the bound is asserted).
    assert small <= 2 + 2 + 1 and large <= 2 + 2 + 1


# -- make_batches --------------------------------------------------------------------------------

def test_make_batches_keeps_small_splits_resident_and_streams_large_ones(tmp_path, monkeypatch, caplog):
    ds = _dataset(tmp_path)
    cache, key = _cached(ds, tmp_path / "cache")
    soft = cache.load_split(key, "train", ds.load_split("train").ids, augmented=True)
    per_shard = streaming.shard_soft_labels(cache, key, "train", augmented=True)
    # Resident only when the split is no larger than what streaming would hold (window + read-ahead).
    small = make_batches(ds, "train", 8, CPU, soft=per_shard, augmentation=AUG, shuffle_shards=16)
    assert isinstance(small, ArrayBatches) and torch.equal(small.soft.values, soft.values)
    assert isinstance(make_batches(ds, "train", 8, CPU, soft=per_shard, augmentation=AUG, shuffle_shards=1,
                                   prefetch=0), ShardBatches)
    monkeypatch.setattr(streaming, "RESIDENT_CPU_MAX_BYTES", 4096)  # the split needs ~10 KiB
    with caplog.at_level("INFO", logger="kdflow.training.streaming"):
        large = make_batches(ds, "train", 8, CPU, soft=per_shard, augmentation=AUG, shuffle_shards=16)
    assert isinstance(large, ShardBatches) and large.replays_views
    assert "over the CPU limit" in caplog.text and "streaming 8 shards" in caplog.text
    assert isinstance(make_batches(ds, "train", 8, CPU, resident="always"), ArrayBatches)
    monkeypatch.setattr(streaming, "RESIDENT_CPU_MAX_BYTES", 1 << 30)
    assert isinstance(make_batches(ds, "train", 8, CPU, resident="never"), ShardBatches)


def test_training_from_streamed_shards_does_not_wait_for_the_device_per_step(tmp_path, monkeypatch):
    """The trainer's no-host-sync guarantee holds on the streamed path too: reads of device values stay
    the same for 9 steps an epoch as for 45 (the shard count, read per shard, is the same: 3)."""
    from kdflow.distillers import build_distiller, get_distiller_class
    from kdflow.models import Classifier, create_model
    from kdflow.training.trainer import fit

    reads = count_device_reads(monkeypatch)

    def reads_for(n: int) -> tuple[int, int]:
        ds = _dataset(tmp_path / str(n), n=n, shard_size=n // 3, size=8)
        torch.manual_seed(0)
        student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
        distiller = build_distiller("ce", student, None, get_distiller_class("ce").Options())
        batches = ShardBatches(ds, "train", 4, CPU, augmentation=AUG, shuffle_shards=2)
        reads["n"] = 0
        fit(distiller, batches, TrainConfig(epochs=1, batch_size=4, lr=0.05, device="cpu"))
        return reads["n"], batches.steps_per_epoch()

    few, few_steps = reads_for(36)
    many, many_steps = reads_for(180)
    assert many_steps >= 5 * few_steps and many == few, (few, few_steps, many, many_steps)
