"""The soft-label cache written as a fan-out (label_part per part, then commit), its compact format,
and per-shard reading. Datasets are written directly as shards (no image decoding): small and fast."""

from __future__ import annotations

import json
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


def make_dataset(root: Path, counts: dict[str, int], shard_size: int, classes: int = 3, size: int = 8,
                 seed: int = 0) -> DatasetManifest:
    rng = np.random.default_rng(seed)
    names = [f"c{i:04d}" for i in range(classes)]
    splits = {}
    for split, n in counts.items():
        arrays = SplitArrays(rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
                             rng.integers(0, classes, n).astype(np.int64),
                             np.array([f"{split}-{seed}-{i:06d}" for i in range(n)]))
        splits[split] = SplitInfo(n, tuple(np.bincount(arrays.labels, minlength=classes).tolist()),
                                  tuple(write_split_shards(str(root), split, arrays, shard_size)))
    spec = PreprocessSpec(size, 3, "squash", "bilinear", {"synthetic": seed})
    total = sum(s.count for s in splits.values())
    DatasetManifest.build(str(root), "synthetic", spec, names, splits, ChannelStats((0.5,) * 3, (0.25,) * 3),
                          PreprocessReport(total, 0, 0, total, 1, 0)).write()
    return DatasetManifest.open(str(root))


class Teacher:
    """Deterministic logits from the pixels (and the view's params); counts calls; can fail on a call."""

    def __init__(self, classes: int, k: int = 10, fail_on_call: int | None = None):
        self.classes, self.k, self.fail_on_call, self.calls = classes, k, fail_on_call, 0
        self.proj = torch.randn(3, classes, generator=torch.Generator().manual_seed(7)) * 4

    def __call__(self, images_u8, params):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("preempted")
        x = torch.from_numpy(images_u8).float().mean(dim=(1, 2)) / 64  # [n, 3]
        if params is not None:
            x = x + torch.from_numpy(params[:, :3]).float() / 16
        return compress(x @ self.proj, self.k)


AUG = AugmentConfig(crop="pad", padding=2, views=2)


def _spec(dataset, n_views=2):
    return EntrySpec("teacher", dataset, 10, tuple(views.plan(AUG, n_views)))


@pytest.fixture()
def dataset(tmp_path):
    # 7 + 3 + 3 shards of 4 rows (the last of each split shorter): 13 units to divide.
    return make_dataset(tmp_path / "ds", {"train": 26, "val": 10, "test": 9}, shard_size=4)


def _files(cache: SoftLabelCache) -> dict[str, bytes]:
    root = Path(cache.root) / "softlabels"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _without_time(files: dict[str, bytes]) -> dict[str, object]:
    out = {}
    for name, raw in files.items():
        if name.endswith(".json"):
            data = json.loads(raw)
            data.pop("created_unix", None)
            out[name] = data
        else:
            out[name] = raw
    return out


def test_fanout_gives_the_single_task_entry(dataset, tmp_path):
    single, fanned = SoftLabelCache(str(tmp_path / "one")), SoftLabelCache(str(tmp_path / "three"))
    spec = _spec(dataset)
    single.write(spec, Teacher(3), teacher_uri="x")
    assert [u[0] for u in spec.part_units(0, 3)] == ["train"] * 4
    assert sum(len(spec.part_units(p, 3)) for p in range(3)) == len(spec.units()) == 13
    teacher = Teacher(3)
    for part in (2, 0, 1):  # any order: parts are independent
        fanned.label_part(spec, teacher, part, 3)
    assert fanned.lookup(spec.key) is None  # nothing is complete before the commit
    _, stats = fanned.commit(spec, teacher_uri="x")
    assert stats == {"views_computed": 3, "views_reused": 0}
    assert teacher.calls == 13 + 2 * 7  # the plain view of every shard, 2 augmented views of train's 7
    assert _without_time(_files(fanned)) == _without_time(_files(single))  # same bytes, same manifests
    ids = np.concatenate([s.ids for s in dataset.iter_shards("train")])
    a, b = (c.load_split(spec.key, "train", ids, augmented=True) for c in (single, fanned))
    assert torch.equal(a.values, b.values) and torch.equal(a.params, b.params)


def test_partial_fanout_is_not_complete_and_a_rerun_labels_only_what_is_missing(dataset, tmp_path):
    cache, spec = SoftLabelCache(str(tmp_path / "c")), _spec(dataset)
    cache.label_part(spec, Teacher(3), 0, 3)
    with pytest.raises(RuntimeError, match="preempted"):
        cache.label_part(spec, Teacher(3, fail_on_call=3), 1, 3)  # part 1 fails after two view shards
    cache.label_part(spec, Teacher(3), 2, 3)
    assert cache.lookup(spec.key) is None
    with pytest.raises(CacheError, match="not complete") as err:
        cache.commit(spec)
    assert "re-run teacher inference" in err.value.fix
    assert cache.lookup(spec.key) is None  # the refused commit wrote nothing
    assert not list((Path(cache.root) / "softlabels").rglob("*.json"))
    assert cache.parts_with_work(spec, 3) == [1]
    rerun = Teacher(3)
    for part in range(3):
        cache.label_part(spec, rerun, part, 3)
    part1 = spec.part_units(1, 3)  # train shards 4-6 (3 views each) and val shard 0 (the plain view)
    assert rerun.calls == sum(3 if split == "train" else 1 for split, _ in part1) - 2  # 2 were kept
    cache.commit(spec)
    assert cache.lookup(spec.key) is not None and cache.parts_with_work(spec, 3) == []


def test_interrupted_single_task_keeps_what_it_labelled(dataset, tmp_path):
    cache, spec = SoftLabelCache(str(tmp_path / "c")), _spec(dataset, 0)
    with pytest.raises(RuntimeError, match="preempted"):
        cache.write(spec, Teacher(3, fail_on_call=5))
    rerun = Teacher(3)
    cache.write(spec, rerun)
    assert rerun.calls == 13 - 4


def test_a_failed_write_fails_the_part_and_nothing_is_committed(dataset, tmp_path, monkeypatch):
    cache, spec = SoftLabelCache(str(tmp_path / "c")), _spec(dataset, 0)
    real, writes = cache.store.write_bytes, []

    def flaky(uri, data):
        writes.append(uri)
        if len(writes) == 2:
            raise OSError("disk full")
        real(uri, data)

    monkeypatch.setattr(cache.store, "write_bytes", flaky)
    with pytest.raises(OSError, match="disk full"):  # raised on the labelling thread, not lost nor hung
        cache.label_part(spec, Teacher(3), 0, 1)
    monkeypatch.setattr(cache.store, "write_bytes", real)
    with pytest.raises(CacheError, match="not complete"):
        cache.commit(spec)
    rerun = Teacher(3)
    cache.write(spec, rerun)
    assert 0 < rerun.calls < 13 and cache.lookup(spec.key) is not None


def test_load_shard_matches_load_split_and_checks_alignment(dataset, tmp_path):
    cache, spec = SoftLabelCache(str(tmp_path / "c")), _spec(dataset)
    cache.write(spec, Teacher(3))
    shards = list(dataset.iter_shards("train"))
    whole = cache.load_split(spec.key, "train", np.concatenate([s.ids for s in shards]), augmented=True)
    start = 0
    for i, shard in enumerate(shards):
        part = cache.load_shard(spec.key, "train", i, shard.ids, augmented=True)
        rows = slice(start, start + len(shard))
        assert part.num_views == 2 and part.params.dtype == torch.int16
        assert torch.equal(part.values, whole.values[rows]) and torch.equal(part.params, whole.params[rows])
        start += len(shard)
    plain = cache.load_shard(spec.key, "train", 1, shards[1].ids)
    assert plain.values.dtype == torch.float32 and plain.index.dtype == torch.int64
    assert plain.num_views == 1 and plain.params is None
    with pytest.raises(CacheError, match="not aligned"):
        cache.load_shard(spec.key, "train", 1, shards[0].ids)
    with pytest.raises(CacheError, match="not aligned"):
        cache.load_shard(spec.key, "train", 1, shards[1].ids[::-1])


def test_labels_round_trip_through_the_compact_format(dataset, tmp_path):
    cache, spec = SoftLabelCache(str(tmp_path / "c")), _spec(dataset, 0)
    cache.write(spec, Teacher(3))
    shard = next(iter(dataset.iter_shards("val")))
    soft = cache.load_shard(spec.key, "val", 0, shard.ids)
    expected = Teacher(3)(shard.images, None)  # 3 classes <= k: whole rows, exact up to float16
    z = torch.from_numpy(expected["values"])
    got = soft.rows(torch.arange(len(shard))).logits()
    torch.testing.assert_close(got, z, rtol=0, atol=float(z.abs().max()) * 2 ** -10)
    assert torch.equal(got.argmax(-1), z.argmax(-1))


@pytest.mark.parametrize("rows", [222, 64])
def test_soft_labels_take_at_most_56_bytes_per_sample_per_view(tmp_path, rows):
    """k = 10 of 1000 classes, augmented views (int16 [5] params each): the view shard files, all
    bytes (headers, digests) counted, divided by samples x views. 222 rows is a 224-px dataset's
    default shard (data.shard_size 0: about 32 MiB of pixels), 64 the smallest default shard."""
    from kdflow.config import DataConfig

    assert DataConfig(image_size=224).rows_per_shard() == 222 and DataConfig(image_size=1024).rows_per_shard() == 64
    n = 4 * rows
    dataset = make_dataset(tmp_path / "ds", {"train": n}, shard_size=rows, classes=1000, size=4)
    spec = _spec(dataset, 2)
    cache = SoftLabelCache(str(tmp_path / "c"))
    cache.write(spec, Teacher(1000))
    sizes = {}
    for view in spec.views:
        files = list(Path(cache.view_uri(spec.view_key(view))).glob("train-*"))
        assert len(files) == 4 and all(p.suffix == ".kdsl" for p in files)
        sizes[view.is_identity] = sum(p.stat().st_size for p in files) / n
    print(f"rows {rows}: {sizes[False]:.2f} bytes per sample per augmented view, {sizes[True]:.2f} plain")
    assert sizes[False] <= 56 and sizes[True] <= 46, sizes


def test_fanout_steps_plan_part_commit(tmp_path, tiny_labelled, tiny_teacher, tiny_config_yaml):
    """The steps the pipeline's tasks run: the plan checks the teacher and hands out items; a commit
    before every part has finished refuses; a replaced teacher is refused; a hit plans one no-op part."""
    from kdflow.util.errors import KdflowError
    from kdflow.softlabels.ref import SoftLabelRef
    from kdflow.steps.teacher import run_teacher_inference
    from kdflow.steps.teacher_fanout import run_teacher_commit, run_teacher_part, run_teacher_plan

    config = tiny_config_yaml.replace("teacher: {", "teacher: {shards_per_task: 1, ")
    data = str(tiny_labelled.dataset)  # the tiny data preprocessed with these data settings (read only)
    cache = str(tmp_path / "cache")
    items = run_teacher_plan(data, tiny_teacher, config, cache)
    assert [(i["part"], i["parts"]) for i in items] == [(0, 3), (1, 3), (2, 3)]  # one per dataset shard
    assert {i["teacher_uri"] for i in items} == {tiny_teacher} and len(items[0]["teacher_digest"]) == 64
    with pytest.raises(KdflowError, match="changed during teacher inference"):
        run_teacher_part(data, tiny_teacher, config, cache, 0, 3, "0" * 64)
    for item in (items[0], items[2]):
        run_teacher_part(data, tiny_teacher, config, cache, item["part"], item["parts"], item["teacher_digest"])
    with pytest.raises(CacheError, match="not complete"):
        run_teacher_commit(data, tiny_teacher, config, cache, str(tmp_path / "ref"))
    assert [i["part"] for i in run_teacher_plan(data, tiny_teacher, config, cache)] == [1]  # only what is missing
    stats = run_teacher_part(data, tiny_teacher, config, cache, 1, 3, items[1]["teacher_digest"])
    assert stats == {"shards_labelled": 1, "shards_kept": 0}  # part 1 is the val shard: the plain view alone
    ref = run_teacher_commit(data, tiny_teacher, config, cache, str(tmp_path / "ref"))
    assert not ref.cache_hit and SoftLabelRef.load(str(tmp_path / "ref")) == ref
    assert run_teacher_plan(data, tiny_teacher, config, cache) == [{**items[0], "parts": 3}]  # a hit: one no-op part
    assert run_teacher_part(data, tiny_teacher, config, cache, 0, 3)["shards_labelled"] == 0
    one = run_teacher_inference(data, tiny_teacher, tiny_config_yaml, cache, str(tmp_path / "one"))
    assert one.cache_hit and one.cache_key == ref.cache_key
