"""Replayed multi-view soft labels: the student sees exactly the pictures the teacher labelled."""

import hashlib

import pytest
import torch

from kdflow.config import Config, DataConfig
from kdflow.data.preprocess import preprocess
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.models import Classifier, create_model
from kdflow.models.loading import TeacherSource, save_checkpoint
from kdflow.softlabels.cache import SoftLabelCache
from kdflow.steps.teacher import run_teacher_inference
from kdflow.training import augment
from kdflow.training.batches import ArrayBatches
from tests.helpers import make_image_folder

CONFIG = """
data: {image_size: 12, val_fraction: 0.2, test_fraction: 0.2, seed: 0, shard_size: 7}
teacher: {top_k: 10, batch_size: 5}
augment: {crop: resized, scale: [0.3, 1.0], flip: true, views: 3, seed: 4}
train: {batch_size: 8}
distill: {method: kd, options: {temperature: 4.0, alpha: 0.9}}
gate: {min_teacher_accuracy: 0.0}  # an untrained teacher: these tests need its labels, not its accuracy
"""


def _digest(picture: torch.Tensor) -> str:
    return hashlib.sha256(picture.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture()
def labelled(tmp_path, monkeypatch):
    """Teacher inference over a small dataset, recording every picture the teacher was shown."""
    cfg = Config.from_yaml(CONFIG)
    dataset = preprocess(str(make_image_folder(tmp_path / "d", per_class=10)), str(tmp_path / "ds"), cfg.data)
    torch.manual_seed(0)
    teacher = Classifier(create_model("convnet_xs", dataset.num_classes), dataset.mean, dataset.std)
    (tmp_path / "teacher.pt").write_bytes(save_checkpoint(teacher, "convnet_xs", dataset.num_classes))
    seen: set[str] = set()  # every augmented picture rendered for the teacher (not the plain ones)
    real_apply = augment.apply_views

    def recording_apply(images, params):
        views = real_apply(images, params)
        seen.update(_digest(p) for p in views)
        return views

    monkeypatch.setattr(augment, "apply_views", recording_apply)
    ref = run_teacher_inference(str(tmp_path / "ds"), str(tmp_path / "teacher.pt"), CONFIG,
                                str(tmp_path / "cache"), str(tmp_path / "ref"))
    monkeypatch.setattr(augment, "apply_views", real_apply)
    assert len(seen) > 0
    train = dataset.load_split("train")
    soft = SoftLabelCache(ref.cache_uri).load_split(ref.cache_key, "train", train.ids, augmented=True)
    online = TeacherSource(str(tmp_path / "teacher.pt")).load(dataset.mean, dataset.std)
    return cfg, ArrayBatches(train, cfg.train.batch_size, torch.device("cpu"), soft, cfg.augment), seen, online


def test_replayed_views_are_pixel_identical_to_what_the_teacher_labelled(labelled):
    cfg, batches, seen, teacher = labelled
    assert batches.soft.num_views == 3 and batches.replays_views
    shown = 0
    for epoch in range(3):
        for batch in batches.batches(epoch=epoch, seed=cfg.train.seed):
            for picture in batch["image"]:
                assert _digest(picture) in seen  # bit for bit one of the teacher's augmented pictures
                shown += 1
            # ...and paired with the teacher's labels of that very picture (full rows: k >= C, stored
            # as float16 gaps from the top-1 logit, so equal to float16 precision).
            with torch.no_grad():
                assert torch.allclose(batch["teacher_soft"].logits(), teacher(batch["image"]), atol=2e-3)
    assert shown == 3 * batches.steps_per_epoch() * cfg.train.batch_size


def test_each_epoch_replays_another_view(labelled):
    cfg, batches, _, _ = labelled
    views = [batches.epoch_views(e, cfg.train.seed) for e in range(4)]
    assert torch.equal(views[0], batches.epoch_views(0, cfg.train.seed))  # deterministic
    assert all(not torch.equal(views[0], v) for v in views[1:])
    assert set(torch.cat(views).tolist()) == {0, 1, 2}
    # Augmented views really differ from each other and from the plain picture.
    params = batches.soft.params
    assert (params[:, 0] != params[:, 1]).any(dim=-1).float().mean() > 0.9


def test_offline_kd_equals_online_kd_on_the_same_views(labelled):
    """At full k (3 classes, k = 10) the cache holds the teacher's whole logit rows (float16 gaps from
    the top-1, see kdflow.softlabels.codec): the loss and every gradient must match the teacher run
    online on the same pictures to that precision."""
    cfg, batches, _, teacher = labelled
    torch.manual_seed(1)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    distiller = build_distiller("kd", student, teacher, get_distiller_class("kd").Options(temperature=4.0))
    distiller.train()
    compared = 0
    for batch in batches.batches(epoch=1, seed=cfg.train.seed):
        offline = distiller(batch)
        g_off = torch.autograd.grad(offline["loss"], list(student.parameters()))
        online_batch = {k: v for k, v in batch.items() if k != "teacher_soft"}
        online = distiller(online_batch)
        g_on = torch.autograd.grad(online["loss"], list(student.parameters()))
        assert online["kd"].item() == pytest.approx(offline["kd"].item(), rel=1e-3, abs=1e-7)
        assert online["loss"].item() == pytest.approx(offline["loss"].item(), rel=1e-3)
        for a, b in zip(g_off, g_on, strict=True):
            assert torch.allclose(a, b, rtol=1e-2, atol=1e-5)
        compared += 1
    assert compared == batches.steps_per_epoch()


def test_more_views_reuse_the_views_already_computed(tmp_path):
    from kdflow.softlabels import views
    from kdflow.softlabels.cache import EntrySpec

    dataset = preprocess(str(make_image_folder(tmp_path / "d", per_class=6)), str(tmp_path / "ds"),
                         DataConfig(image_size=8, shard_size=100))
    cfg = Config.from_yaml("augment: {views: 2}")
    calls = []

    def infer(images, params):
        from kdflow.softlabels.codec import compress

        calls.append(params is None)
        return compress(torch.from_numpy(images).float().mean(dim=(1, 2)), 10)

    cache = SoftLabelCache(str(tmp_path / "cache"))
    two = EntrySpec("t", dataset, 10, tuple(views.plan(cfg.augment, 2)))
    _, stats = cache.write(two, infer)
    assert stats == {"views_computed": 3, "views_reused": 0}
    four = EntrySpec("t", dataset, 10, tuple(views.plan(cfg.augment, 4)))
    assert four.key != two.key and cache.lookup(four.key) is None
    calls.clear()
    _, stats = cache.write(four, infer)
    assert stats == {"views_computed": 2, "views_reused": 3}
    assert calls == [False, False]  # only the two new augmented views ran, over the train split only
    ids = dataset.load_split("train").ids
    small, big = (cache.load_split(e.key, "train", ids, augmented=True) for e in (two, four))
    assert big.num_views == 4 and torch.equal(big.params[:, :2], small.params)
    assert torch.equal(big.values[:, :2], small.values)
