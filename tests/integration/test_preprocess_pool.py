"""Preprocess above its in-process size: decoding in a pool of worker processes writes the dataset that
decoding in the step's own process writes, byte for byte."""

from kdflow.config import DataConfig
from kdflow.data import preprocess as prep
from kdflow.data.preprocess import preprocess
from tests.helpers import dataset_files, messy_folder


def test_the_process_pool_writes_the_same_dataset(tmp_path, monkeypatch):
    root = messy_folder(tmp_path / "d")
    cfg = DataConfig(image_size=8, group_by="phash", shard_size=9)
    preprocess(str(root), str(tmp_path / "inline"), cfg)
    monkeypatch.setattr(prep, "IN_PROCESS_FILES", 0)
    monkeypatch.setattr(prep, "FILES_PER_LOCAL_PART", 10)
    monkeypatch.setattr(prep, "available_cpus", lambda: 2)
    preprocess(str(root), str(tmp_path / "pool"), cfg)
    assert dataset_files(tmp_path / "pool") == dataset_files(tmp_path / "inline")
