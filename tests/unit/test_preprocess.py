"""Ingest on generated folders with corrupt, truncated, non-image and duplicate files."""

import json

import numpy as np
import pytest

from kdflow.config import DataConfig
from kdflow.data.preprocess import preprocess
from kdflow.data.shards import DatasetManifest
from kdflow.data.split import unit_draw
from kdflow.util.errors import DataError
from tests.helpers import class_image, jpeg_bytes, make_image_folder, png_bytes

CFG = DataConfig(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=3)


def _all_ids(ds: DatasetManifest) -> dict[str, set]:
    return {s: set(ds.load_split(s).ids.tolist()) for s in ("train", "val", "test")}


def test_defective_files_are_dropped_and_reported(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=10)
    good = jpeg_bytes(class_image(0, seed=999))
    (root / "apple" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "apple" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    (root / "kiwi" / "notes.txt").write_text("not an image")
    (root / "kiwi" / "empty.jpg").write_bytes(b"")
    (root / "README.md").write_text("stray file at the root")
    dup = (root / "plum" / "000.png").read_bytes()
    (root / "plum" / "copy-of-000.png").write_bytes(dup)  # duplicate within a class
    (root / "kiwi" / "plum-lookalike.png").write_bytes((root / "plum" / "002.png").read_bytes())  # across classes

    ds = preprocess(str(root), str(tmp_path / "out"), CFG)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {r["path"]: r["reason"] for r in report["dropped"]}
    assert reasons["apple/truncated.jpg"].startswith("truncated or corrupt")
    assert reasons["apple/corrupt.png"].startswith(("truncated or corrupt", "not an image"))
    assert reasons["kiwi/notes.txt"] == "not an image"
    assert reasons["kiwi/empty.jpg"] == "empty file"
    assert reasons["README.md"] == "file outside any class folder"
    dups = {r["path"]: r["reason"] for r in report["duplicates"]}
    assert dups["plum/copy-of-000.png"] == "duplicate of plum/000.png"
    # An identical file under two classes is ambiguous: both copies go.
    assert "different classes" in dups["kiwi/plum-lookalike.png"] and "plum/002.png" in dups
    total = sum(ds.count(s) for s in ("train", "val", "test"))
    assert total == 30 - 1  # 30 clean files; plum/002 dropped as a label conflict
    assert ds.report.to_dict() == {"files_seen": 30 + 7, "dropped": 5, "duplicates_removed": 3,
                                   "groups": 29, "largest_group": 1, "moved_to_held_out": 0}


def test_split_is_drawn_per_sample_seeded_and_disjoint(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=20)
    ds = preprocess(str(root), str(tmp_path / "a"), CFG)
    ids = _all_ids(ds)
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    assert sum(len(v) for v in ids.values()) == 60
    # Each sample by itself: u = unit_draw(seed, id); test below 0.2, val from 0.8 up, train between.
    for split, members in ids.items():
        for sid in members:
            u = unit_draw(3, sid)
            assert split == ("test" if u < 0.2 else "val" if u >= 0.8 else "train")
    # Per sample, not stratified: the class counts still add up, but need not be 4/4/12.
    counts = [ds.splits[s].class_counts for s in ("train", "val", "test")]
    assert [sum(c) for c in zip(*counts)] == [20, 20, 20]
    again = preprocess(str(root), str(tmp_path / "b"), CFG)
    assert again.fingerprint == ds.fingerprint and _all_ids(again) == ids
    other_seed = preprocess(str(root), str(tmp_path / "c"), DataConfig(image_size=8, val_fraction=0.2,
                                                                        test_fraction=0.2, seed=4))
    assert _all_ids(other_seed)["test"] != ids["test"] and other_seed.fingerprint != ds.fingerprint


def test_fingerprint_follows_content_not_names(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=8)
    first = preprocess(str(root), str(tmp_path / "a"), CFG).fingerprint
    (root / "apple" / "000.png").rename(root / "apple" / "renamed.png")
    assert preprocess(str(root), str(tmp_path / "b"), CFG).fingerprint == first
    (root / "apple" / "renamed.png").write_bytes(png_bytes(class_image(0, seed=12345)))
    assert preprocess(str(root), str(tmp_path / "c"), CFG).fingerprint != first


def test_predefined_splits_and_cross_split_duplicates(tmp_path):
    train = make_image_folder(tmp_path / "d" / "train", per_class=10)
    test = tmp_path / "d" / "test"
    for name in ("apple", "kiwi", "plum"):
        (test / name).mkdir(parents=True)
    for i, name in enumerate(("apple", "kiwi", "plum")):
        (test / name / "t.png").write_bytes(png_bytes(class_image(i, seed=777 + i)))
    # The same picture in train and test: kept in test only, never in two splits.
    (test / "apple" / "leak.png").write_bytes((train / "apple" / "004.png").read_bytes())
    ds = preprocess(str(tmp_path / "d"), str(tmp_path / "out"), CFG)
    ids = _all_ids(ds)
    assert ds.count("test") == 4
    assert not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])
    dups = json.loads((tmp_path / "out" / "report.json").read_text())["duplicates"]
    assert dups == [{"path": "train/apple/004.png", "reason": "duplicate of test/apple/leak.png"}]
    assert ds.count("train") + ds.count("val") == 29


def test_stats_come_from_train_only_and_images_are_resized(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=10, size=20)
    ds = preprocess(str(root), str(tmp_path / "out"), CFG)
    train = ds.load_split("train")
    assert train.images.shape[1:] == (8, 8, 3) and train.images.dtype == np.uint8
    expected = (train.images.reshape(-1, 3) / 255.0).mean(0)
    assert np.allclose(ds.mean, expected, atol=1e-5)


def test_tampered_shard_fails_verification(tmp_path):
    root = make_image_folder(tmp_path / "d", per_class=6)
    ds = preprocess(str(root), str(tmp_path / "out"), CFG)
    shard = tmp_path / "out" / ds.splits["train"].shards[0].file
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the pixel data
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match its manifest digest"):
        ds.load_split("train")


@pytest.mark.parametrize("layout,message", [
    ("missing", "does not exist"),
    ("no-classes", "has no class folders"),
    ("one-class", "at least 2 classes"),
    ("mixed", "mixes split folders"),
])
def test_bad_layouts_are_clear_errors(tmp_path, layout, message):
    root = tmp_path / "d"
    if layout == "no-classes":
        root.mkdir()
        (root / "a.png").write_bytes(png_bytes(class_image(0, 1)))
    elif layout == "one-class":
        (root / "only").mkdir(parents=True)
        (root / "only" / "a.png").write_bytes(png_bytes(class_image(0, 1)))
    elif layout == "mixed":
        make_image_folder(root / "train", per_class=2)
        (root / "extra").mkdir()
    with pytest.raises(DataError, match=message):
        preprocess(str(root), str(tmp_path / "out"), CFG)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_channel_statistics_are_exact_and_can_accumulate_in_batches():
    from kdflow.data.stats import ChannelHistogram, channel_stats

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 7, 5, 3), dtype=np.uint8)
    images[..., 2] = 255  # a constant channel: std 0, floored
    x = images.reshape(-1, 3).astype(np.float64) / 255.0
    mean, std = channel_stats(images)
    np.testing.assert_allclose(mean, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(std[:2], x.std(0)[:2], atol=1e-6)
    assert std[2] == 1e-6 and mean[2] == 1.0
    hist = ChannelHistogram()
    for batch in np.array_split(images, 7):
        hist.update(batch)
    assert hist.mean_std() == (mean, std)
