"""Preprocess reads an image folder from S3 (moto's server) exactly as it reads the same folder locally,
and its decoded parts may be spooled there."""

import json

import pytest

from kdflow.config import DataConfig
from kdflow.data.preprocess import assemble, decode_part, preprocess
from kdflow.util.errors import DataError, StorageError
from tests.helpers import class_image, jpeg_bytes, make_image_folder, messy_folder, upload_folder

CFG = DataConfig(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=3)


def _defective_folder(root):
    make_image_folder(root, per_class=8)
    good = jpeg_bytes(class_image(0, seed=999))
    (root / "apple" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "kiwi" / "notes.txt").write_text("not an image")
    (root / "kiwi" / "empty.jpg").write_bytes(b"")
    (root / "README.md").write_text("stray file at the root")
    (root / "plum" / "copy-of-000.png").write_bytes((root / "plum" / "000.png").read_bytes())
    return root


def _same_dataset(local_out, remote_out, remote_source: str) -> dict:
    local = json.loads((local_out / "manifest.json").read_text())
    remote = json.loads((remote_out / "manifest.json").read_text())
    assert remote.pop("source") == remote_source
    local.pop("source")
    assert remote == local  # fingerprint, spec, splits and shard digests, stats, report counts
    assert (remote_out / "report.json").read_text() == (local_out / "report.json").read_text()
    return remote


def test_s3_folder_gives_the_local_dataset(tmp_path, s3_bucket):
    root = _defective_folder(tmp_path / "d")
    uri = upload_folder(root, s3_bucket, "raw/images")
    preprocess(str(root), str(tmp_path / "local"), CFG)
    preprocess(uri, str(tmp_path / "remote"), CFG)
    manifest = _same_dataset(tmp_path / "local", tmp_path / "remote", f"s3://{s3_bucket}/raw/images")
    assert manifest["report"]["dropped"] == 4 and manifest["report"]["duplicates_removed"] == 1
    reasons = {r["path"]: r["reason"] for r in json.loads((tmp_path / "remote" / "report.json").read_text())["dropped"]}
    assert reasons["README.md"] == "file outside any class folder" and reasons["kiwi/empty.jpg"] == "empty file"


def test_s3_folder_with_predefined_splits_and_grouping(tmp_path, s3_bucket):
    make_image_folder(tmp_path / "d" / "train", per_class=10)
    make_image_folder(tmp_path / "d" / "test", per_class=2, size=10)
    (tmp_path / "d" / "train" / "stray.txt").write_text("directly in train/")
    (tmp_path / "d" / "NOTES.md").write_text("beside the split folders")  # reported too, not skipped
    uri = upload_folder(tmp_path / "d", s3_bucket, "split")
    # Group by the last digit of the file name: ten groups, each across classes and split folders.
    cfg = DataConfig(image_size=8, val_fraction=0.2, seed=1, group_by="regex", group_pattern=r"(\d)\.(png|jpg)$")
    preprocess(str(tmp_path / "d"), str(tmp_path / "local"), cfg)
    preprocess(uri, str(tmp_path / "remote"), cfg)
    manifest = _same_dataset(tmp_path / "local", tmp_path / "remote", f"s3://{s3_bucket}/split")
    assert manifest["report"]["groups"] == 10 and manifest["report"]["dropped"] == 2
    # test/ holds 000 and 001 of each class: groups "0" and "1" take train/'s 000 and 001 with them.
    assert manifest["report"]["moved_to_held_out"] == 6 and manifest["splits"]["test"]["count"] == 6 + 6


def test_missing_prefix_and_bucket_are_clear_errors(tmp_path, s3_bucket):
    with pytest.raises(DataError, match="holds no objects"):
        preprocess(f"s3://{s3_bucket}/nothing-here/", str(tmp_path / "a"), CFG)
    with pytest.raises(StorageError, match="does not exist"):
        preprocess("s3://no-such-bucket-kdflow/x/", str(tmp_path / "b"), CFG)
    assert not (tmp_path / "a" / "manifest.json").exists()


def test_spools_in_object_storage(tmp_path, s3_bucket):
    root = messy_folder(tmp_path / "d")
    cfg = DataConfig(image_size=8, group_by="phash", shard_size=6)
    preprocess(str(root), str(tmp_path / "one"), cfg)
    src = upload_folder(root, s3_bucket, "raw")
    work = f"s3://{s3_bucket}/work"
    for part in range(3):
        decode_part(src, work, cfg, part, 3)
    assemble(src, work, str(tmp_path / "out"), cfg, 3)
    local, remote = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("one", "out"))
    assert remote.pop("source") != local.pop("source") and remote == local
