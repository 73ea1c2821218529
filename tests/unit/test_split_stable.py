"""The split is a pure function of (content, seed): a growing dataset never moves an old sample."""

import hashlib

import numpy as np
import pytest

from kdflow.config import DataConfig
from kdflow.data.preprocess import preprocess
from kdflow.data.split import SampleTable, assign_splits, unit_draw
from kdflow.util.errors import DataError
from tests.helpers import class_image, make_image_folder, png_bytes

CFG = DataConfig(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=3)


def _split_of(ds) -> dict[str, str]:
    return {sid: s for s in ("train", "val", "test") for sid in ds.load_split(s).ids.tolist()}


def _add_images(folder, label_index: int, start: int, count: int) -> None:
    for i in range(start, start + count):
        (folder / f"new-{i:03d}.png").write_bytes(png_bytes(class_image(label_index, seed=90_000 + i)))


def test_adding_images_keeps_every_old_sample_in_its_split(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=30)
    before = _split_of(preprocess(str(root), str(tmp_path / "a"), CFG))
    for li, name in enumerate(("apple", "kiwi", "plum")):
        _add_images(root / name, li, li * 100, 30)
    after = _split_of(preprocess(str(root), str(tmp_path / "b"), CFG))
    assert len(before) == 90 and len(after) == 180
    assert {sid: after[sid] for sid in before} == before
    # The new images spread over all three splits too.
    assert {after[sid] for sid in set(after) - set(before)} == {"train", "val", "test"}


def test_adding_images_to_a_predefined_train_folder_keeps_old_samples(tmp_path):
    make_image_folder(tmp_path / "d" / "train", per_class=20)
    make_image_folder(tmp_path / "d" / "test", per_class=3, size=10)  # other pictures than train's
    before = _split_of(preprocess(str(tmp_path / "d"), str(tmp_path / "a"), CFG))
    _add_images(tmp_path / "d" / "train" / "kiwi", 1, 0, 25)
    after = _split_of(preprocess(str(tmp_path / "d"), str(tmp_path / "b"), CFG))
    assert {sid: after[sid] for sid in before} == before
    # test/ is predefined: nothing is carved into test, val is carved from train/.
    assert sum(s == "test" for s in after.values()) == 9
    assert {after[sid] for sid in set(after) - set(before)} == {"train", "val"}


def test_changing_the_seed_reshuffles(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=30)
    a = _split_of(preprocess(str(root), str(tmp_path / "a"), CFG))
    b = _split_of(preprocess(str(root), str(tmp_path / "b"), DataConfig(image_size=8, val_fraction=0.2,
                                                                         test_fraction=0.2, seed=4)))
    moved = sum(a[sid] != b[sid] for sid in a)
    # Two independent draws agree with probability 0.6^2 + 0.2^2 + 0.2^2 = 0.44: ~50 of 90 move.
    assert 30 <= moved <= 70


def _samples(n: int, labels: int = 10, split=None) -> SampleTable:
    return SampleTable.build([hashlib.sha256(f"s{i}".encode()).hexdigest()[:16] for i in range(n)],
                             [i % labels for i in range(n)], [split] * n)


def _concat(*tables: SampleTable) -> SampleTable:
    return SampleTable(*(np.concatenate([getattr(t, f) for t in tables]) for f in
                         ("ids", "labels", "splits", "rels", "refs")))


def _ids(samples: SampleTable, members: np.ndarray) -> list[str]:
    return [i.decode() for i in samples.ids[members]]


def test_fractions_come_out_close_to_the_configured_ones():
    samples = _samples(5000)
    out = assign_splits(samples, [f"c{i}" for i in range(10)], 0.1, 0.2, seed=0).splits
    counts = {k: len(v) for k, v in out.items()}
    assert sum(counts.values()) == 5000
    # Binomial standard deviations: sqrt(5000 * 0.2 * 0.8) = 28 for test, 21 for val; allow ~3.5 of them.
    assert abs(counts["test"] - 1000) <= 100 and abs(counts["val"] - 500) <= 75
    # Per class (500 each) too, though not exactly: the split is per sample, not stratified.
    for split, expected in (("test", 100), ("val", 50)):
        per_class = np.bincount(samples.labels[out[split]], minlength=10)
        assert np.all(np.abs(per_class - expected) <= 35), per_class
    for members in out.values():  # each split sorted by id
        assert _ids(samples, members) == sorted(_ids(samples, members))


def test_predefined_splits_are_respected_and_val_is_carved_from_train():
    train = _samples(3000, labels=2, split="train")
    test = SampleTable.build([f"{i:016x}" for i in range(100)], [i % 2 for i in range(100)], ["test"] * 100)
    samples = _concat(train, test)
    out = assign_splits(samples, ["a", "b"], 0.25, 0.2, seed=0).splits
    assert set(_ids(samples, out["test"])) == set(_ids(test, np.arange(100)))  # nothing carved: test/ exists
    assert abs(len(out["val"]) - 750) <= 90  # 25% of train/, sd 24
    assert len(out["train"]) + len(out["val"]) == 3000


def test_a_sample_grouped_with_a_test_picture_follows_it_into_test():
    abc = SampleTable.build([f"{i:016x}" for i in range(3)], [0, 0, 0], ["train", "test", "train"])
    extra = _samples(40, labels=1, split="train")
    samples = _concat(abc, extra)
    res = assign_splits(samples, ["only"], 0.0, 0.2, seed=0,
                        group_keys=["g", "g", abc.id(2)] + _ids(extra, np.arange(40)))
    assert {0, 1} <= set(res.splits["test"].tolist()) and res.moved_to_held_out == 1


def test_group_members_share_the_split_of_their_key():
    samples = _samples(600, labels=3)
    keys = [f"group-{i // 6}" for i in range(600)]  # 100 groups of 6
    out = assign_splits(samples, ["a", "b", "c"], 0.2, 0.2, seed=7, group_keys=keys).splits
    where = {int(i): name for name, members in out.items() for i in members}
    for g in range(100):
        u = unit_draw(7, f"group-{g}")
        expected = "test" if u < 0.2 else "val" if u >= 0.8 else "train"
        assert {where[i] for i in range(g * 6, g * 6 + 6)} == {expected}


def test_a_class_with_no_training_image_left_is_an_error():
    samples = _samples(200, labels=2)
    # Class "tiny" has one sample; find one whose draw puts it in test.
    lonely = next(f"{i:016x}" for i in range(100) if unit_draw(0, f"{i:016x}") < 0.2)
    with pytest.raises(DataError, match="no training images left for class\\(es\\): tiny"):
        assign_splits(_concat(samples, SampleTable.build([lonely], [2])), ["a", "b", "tiny"], 0.1, 0.2, seed=0)
