"""The soft-label cache on S3 (moto's server on loopback): an entry written there is found and read back."""

import pytest
import torch

from kdflow.config import DataConfig
from kdflow.data.preprocess import preprocess
from kdflow.softlabels.cache import EntrySpec, SoftLabelCache
from kdflow.softlabels.codec import compress
from tests.helpers import make_image_folder


@pytest.fixture()
def dataset(tmp_path):
    cfg = DataConfig(image_size=8, val_fraction=0.2, test_fraction=0.2, seed=0, shard_size=5)
    return preprocess(str(make_image_folder(tmp_path / "d", per_class=10)), str(tmp_path / "ds"), cfg)


def _teacher(images_u8, params):
    """Deterministic top-10 'logits' from the pixel means (no model needed to exercise the cache)."""
    return compress(torch.from_numpy(images_u8).float().mean(dim=(1, 2)), k=10)


def test_cache_on_s3(dataset, s3_bucket):
    cache = SoftLabelCache(f"s3://{s3_bucket}/kd")
    spec = EntrySpec("t", dataset, 10)
    cache.write(spec, _teacher, teacher_uri="x")
    assert cache.lookup(spec.key).teacher_uri == "x"
    assert cache.load_split(spec.key, "test", dataset.load_split("test").ids).values.shape[0] == dataset.count("test")
