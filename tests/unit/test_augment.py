"""Augmentation: exact crops and flips, deterministic per (seed, epoch, step), different across epochs."""

import numpy as np
import pytest
import torch

from kdflow.config import AugmentConfig, Config
from kdflow.data.shards import SplitArrays
from kdflow.util.errors import ConfigError
from kdflow.training import augment
from kdflow.training.batches import ArrayBatches
from tests.helpers import class_image


def _arrays(n=24, size=10):
    images = np.stack([class_image(i % 3, seed=i, size=size) for i in range(n)])
    return SplitArrays(images, np.arange(n) % 3, np.array([f"{i:016x}" for i in range(n)]))


def test_identity_shift_and_flip_are_exact():
    x = torch.rand(4, 3, 8, 8)
    assert torch.equal(augment.apply_views(x, augment.identity(4, 8, 8)), x)
    p = augment.identity(4, 8, 8)
    p[:, 0], p[:, 1] = 2, -1  # box starts 2 rows down, 1 column left of the image (zero padding)
    y = augment.apply_views(x, p)
    assert torch.equal(y[:, :, :6, 1:], x[:, :, 2:, :7])
    assert y[:, :, 6:].abs().max() == 0 and y[:, :, :, 0].abs().max() == 0
    p = augment.identity(4, 8, 8)
    p[:, 4] = 1
    assert torch.equal(augment.apply_views(x, p), x.flip(-1))


def test_a_box_of_half_size_is_an_upscaled_crop():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    p = torch.tensor([[0, 0, 2, 2, 0]], dtype=torch.int16)  # the top-left 2x2, rendered at 4x4
    y = augment.apply_views(x, p)
    # Bilinear, half-pixel centres: output pixel j samples source (j + 0.5) / 2 - 0.5, clamped to
    # the box [0, 1]: columns 0, 0.25, 0.75, 1 of the crop [[0, 1], [4, 5]].
    assert y[0, 0, 0].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    assert y[0, 0, :, 0].tolist() == pytest.approx([0.0, 1.0, 3.0, 4.0])
    assert y[0, 0, 3].tolist() == pytest.approx([4.0, 4.25, 4.75, 5.0])
    # The same box flipped mirrors the columns.
    flipped = augment.apply_views(x, torch.tensor([[0, 0, 2, 2, 1]], dtype=torch.int16))
    assert torch.equal(flipped, y.flip(-1))


def test_sampled_boxes_respect_the_recipe():
    g = augment.generator(0)
    pad = augment.sample(AugmentConfig(crop="pad", padding=3, flip=True), 500, 32, 32, g)
    assert pad[:, :2].min() == -3 and pad[:, :2].max() == 3
    assert (pad[:, 2:4] == 32).all() and set(pad[:, 4].tolist()) == {0, 1}
    rrc = augment.sample(AugmentConfig(crop="resized", scale=(0.25, 0.5), flip=False), 500, 32, 32, g)
    top, left, h, w, flip = rrc.long().unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 32).all()
    area = (h * w).float() / 1024
    assert area.min() > 0.2 and area.max() < 0.56 and (flip == 0).all()


def test_fresh_augmentation_is_deterministic_for_a_seed_and_differs_across_epochs():
    cfg = AugmentConfig(crop="resized", flip=True)
    batches = ArrayBatches(_arrays(), 8, torch.device("cpu"), augmentation=cfg)

    def epoch(e, seed=0):
        return [(b["rows"], b["image"]) for b in batches.batches(epoch=e, seed=seed)]

    first, again = epoch(0), epoch(0)
    for (ra, ia), (rb, ib) in zip(first, again, strict=True):
        assert torch.equal(ra, rb) and torch.equal(ia, ib)
    # Another epoch (or seed) draws other views, even of the same rows.
    def by_row(passes):
        return {int(r): img for rows, imgs in passes for r, img in zip(rows, imgs)}

    e0, e1, s1 = by_row(first), by_row(epoch(1)), by_row(epoch(0, seed=1))
    assert sum(not torch.equal(e0[r], e1[r]) for r in e0) >= len(e0) - 1
    assert sum(not torch.equal(e0[r], s1[r]) for r in e0) >= len(e0) - 1
    # In-order passes (evaluation) show the plain picture.
    plain = next(iter(batches.batches()))["image"]
    assert torch.equal(plain, torch.from_numpy(_arrays().images[:8]).permute(0, 3, 1, 2).float() / 255)


def test_views_of_a_split_do_not_depend_on_how_many_views_there_are():
    cfg = AugmentConfig(crop="resized", flip=True, seed=5)
    v3 = augment.params_for_split(cfg, "train", 3, 50, 16, 16)
    assert np.array_equal(v3, augment.params_for_split(cfg, "train", 3, 50, 16, 16))
    assert not np.array_equal(v3, augment.params_for_split(cfg, "train", 2, 50, 16, 16))
    other_seed = AugmentConfig(crop="resized", flip=True, seed=6)
    assert not np.array_equal(v3, augment.params_for_split(other_seed, "train", 3, 50, 16, 16))


def test_spec_holds_only_what_the_crop_uses():
    assert augment.spec(AugmentConfig(crop="resized", padding=2)) == augment.spec(AugmentConfig(crop="resized"))
    assert augment.spec(AugmentConfig(crop="pad", padding=2)) != augment.spec(AugmentConfig(crop="pad"))


def test_offline_kd_with_augmentation_needs_cached_views():
    with pytest.raises(ConfigError, match=r"(?s)augment.views is 0.*augment.views >= 1"):
        Config.from_dict({"augment": {"views": 0}})
    # The fixes it names all work.
    assert Config.from_dict({"augment": {"views": 0}, "distill": {"teacher": "online"}}).cached_views() == 0
    assert Config.from_dict({"augment": {"views": 0, "crop": "none"}}).cached_views() == 0
    assert Config.from_dict({"augment": {"views": 3}}).cached_views() == 3
    assert Config.from_dict({"augment": {"views": 3}, "distill": {"method": "ce"}}).cached_views() == 0
