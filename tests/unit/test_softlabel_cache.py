"""The soft-label cache: stable keys, commit-by-manifest, resume, and verification (on S3:
tests/integration/test_softlabel_cache_s3.py)."""

import json

import numpy as np
import pytest
import torch

from kdflow.config import DataConfig
from kdflow.data.preprocess import preprocess
from kdflow.util.errors import CacheError
from kdflow.softlabels.cache import EntrySpec, SoftLabelCache
from kdflow.softlabels.views import IDENTITY
from kdflow.softlabels.codec import compress
from kdflow.storage import join
from tests.helpers import make_image_folder

CFG = DataConfig(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=0, shard_size=5)


@pytest.fixture()
def dataset(tmp_path):
    return preprocess(str(make_image_folder(tmp_path / "d", per_class=10)), str(tmp_path / "ds"), CFG)


class CountingTeacher:
    """Deterministic 'logits' from pixel means; counts calls; can fail on a given call."""

    def __init__(self, fail_on_call: int | None = None):
        self.calls = 0
        self.fail_on_call = fail_on_call

    def __call__(self, images_u8, params):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("preempted")
        x = torch.from_numpy(images_u8).float().mean(dim=(1, 2))  # [n, 3]
        return compress(x, k=10)


def cache_key(teacher, dataset, k, views=(IDENTITY,)):
    return EntrySpec(teacher, dataset, k, tuple(views)).key


def _plain_view_uri(cache, dataset):
    return cache.view_uri(EntrySpec("t", dataset, 10).view_key(IDENTITY))


def test_key_is_stable_and_changes_with_each_ingredient(dataset, tmp_path):
    key = cache_key("teacher-a", dataset, 10)
    assert key == cache_key("teacher-a", dataset, 10)
    assert len(key) == 64
    assert key != cache_key("teacher-b", dataset, 10)
    assert key != cache_key("teacher-a", dataset, 5)
    other = preprocess(dataset.source, str(tmp_path / "ds2"),
                       DataConfig(image_size=10, val_fraction=0.2, test_fraction=0.2, seed=0, shard_size=5))
    assert key != cache_key("teacher-a", other, 10)
    # A second preprocessing run of the same data gives the same key: nothing time-dependent.
    same = preprocess(dataset.source, str(tmp_path / "ds3"), CFG)
    assert cache_key("teacher-a", same, 10) == key


def test_write_then_hit(dataset, tmp_path):
    cache = SoftLabelCache(str(tmp_path / "cache"))
    key = cache_key("t", dataset, 10)
    assert cache.lookup(key) is None
    teacher = CountingTeacher()
    cache.write(EntrySpec("t", dataset, 10), teacher)
    assert teacher.calls == sum(len(i.shards) for i in dataset.splits.values())
    assert cache.lookup(key).key == key
    train = dataset.load_split("train")
    soft = cache.load_split(key, "train", train.ids)
    assert soft.values.shape == (len(train), 1, 3)
    expected = torch.from_numpy(train.images).float().mean(dim=(1, 2))
    # Full rows (3 classes, k = 10), stored as float16 gaps from class 0: exact up to float16 rounding.
    torch.testing.assert_close(soft.rows(torch.arange(len(train))).logits(), expected, rtol=0,
                               atol=float(expected.abs().max()) * 2 ** -10)


def test_interrupted_write_is_not_complete_and_resumes(dataset, tmp_path):
    cache = SoftLabelCache(str(tmp_path / "cache"))
    key = cache_key("t", dataset, 10)
    with pytest.raises(RuntimeError, match="preempted"):
        cache.write(EntrySpec("t", dataset, 10), CountingTeacher(fail_on_call=3))
    written = cache.store.list(_plain_view_uri(cache, dataset))
    assert len(written) == 2 and not any("/manifests/" in u for u in written)
    assert cache.lookup(key) is None  # shards without a manifest are never read as complete
    with pytest.raises(CacheError, match="not complete"):
        cache.load_split(key, "train", dataset.load_split("train").ids)
    resumed = CountingTeacher()
    cache.write(EntrySpec("t", dataset, 10), resumed)
    total = sum(len(i.shards) for i in dataset.splits.values())
    assert resumed.calls == total - 2  # the two finished shards were kept
    assert cache.lookup(key) is not None


def test_damaged_entries_are_misses_or_errors(dataset, tmp_path):
    spec = EntrySpec("t", dataset, 10)
    cache = SoftLabelCache(str(tmp_path / "cache"))
    key = cache_key("t", dataset, 10)
    cache.write(spec, CountingTeacher())
    manifest_uri = join(cache.manifests_uri(spec.view_key(IDENTITY)), "00000000.json")
    manifest = json.loads(cache.store.read_bytes(manifest_uri))
    name = manifest["splits"]["train"]["shards"][0]["file"]
    first = join(_plain_view_uri(cache, dataset), name)
    raw = bytearray(cache.store.read_bytes(first))
    assert verify_clean(cache, spec)

    raw[-40] ^= 0xFF  # same size, different bytes: a hit on lookup, refused on read, found by verify
    cache.store.write_bytes(first, bytes(raw))
    assert cache.lookup(key) is not None
    with pytest.raises(CacheError, match="fails its digest check") as err:
        SoftLabelCache(cache.root).load_split(key, "train", dataset.load_split("train").ids)
    assert "re-run teacher inference" in err.value.fix
    assert [p for p in cache.verify(spec) if name in p]

    cache.store.write_bytes(first, bytes(raw[:-10]))  # truncated: a miss
    assert cache.lookup(key) is None

    cache.store.write_bytes(manifest_uri, b"{not json")  # unreadable manifest: a miss
    assert cache.lookup(key) is None
    cache.store.write_bytes(manifest_uri, json.dumps({**manifest, "key": "other"}).encode())
    assert cache.lookup(key) is None


def verify_clean(cache, spec):
    return cache.lookup(spec.key) is not None and cache.verify(spec) == []


def test_soft_labels_must_align_with_dataset_rows(dataset, tmp_path):
    cache = SoftLabelCache(str(tmp_path / "cache"))
    key = cache_key("t", dataset, 10)
    cache.write(EntrySpec("t", dataset, 10), CountingTeacher())
    ids = dataset.load_split("train").ids
    with pytest.raises(CacheError, match="not aligned"):
        cache.load_split(key, "train", np.roll(ids, 1))


def test_key_follows_the_views_and_nothing_else(dataset):
    """V, the augmentation spec and its seed change the key; what does not change the teacher's
    labels (the distillation method, online or offline, the student's training) cannot reach it."""
    from kdflow.config import Config
    from kdflow.softlabels import views

    def key(text):
        cfg = Config.from_yaml(text)
        return cache_key("t", dataset, 10, views.plan(cfg.augment, cfg.cached_views()))

    base = key("augment: {views: 4}")
    for other in ("augment: {views: 5}", "augment: {views: 4, seed: 1}", "augment: {views: 4, padding: 3}",
                  "augment: {views: 4, flip: true}", "augment: {views: 4, crop: resized}"):
        assert key(other) != base, other
    assert key("augment: {views: 4}\ntrain: {seed: 3, lr: 0.3, epochs: 5}") == base
    assert key("augment: {views: 4, crop: resized, padding: 2}") == key("augment: {views: 4, crop: resized}")
    plain = cache_key("t", dataset, 10)
    assert key("distill: {method: ce}") == key("distill: {teacher: online}") == plain
    assert key("augment: {crop: none, views: 4}") == plain  # nothing to augment: the plain view alone
