"""The training loop: seeded, resumable to the same weights, and loud about divergence."""

import dataclasses

import numpy as np
import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.data.shards import SplitArrays
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.errors import KdflowError
from kdflow.models import Classifier, create_model
from kdflow.training.batches import ArrayBatches
from kdflow.training.trainer import fit
from tests.helpers import class_image

CFG = TrainConfig(epochs=3, batch_size=8, lr=0.05, seed=1, warmup_epochs=1)


def _arrays(n_per_class=12):
    images, labels = [], []
    for label in range(3):
        for i in range(n_per_class):
            images.append(class_image(label, seed=label * 100 + i, size=8))
            labels.append(label)
    return SplitArrays(np.stack(images), np.array(labels), np.array([f"{i:016x}" for i in range(len(labels))]))


HINT = {"pairs": [{"teacher": "stages.1", "student": "stages.0", "weight": 1.0}]}


def _train(cfg, checkpoint_dir=None, method="ce", out=None):
    from kdflow.typed import from_dict

    torch.manual_seed(0)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    teacher = Classifier(create_model("convnet_s", 3), (0.5,) * 3, (0.25,) * 3) if method != "ce" else None
    options = from_dict(get_distiller_class(method).Options, HINT if method == "hint" else {})
    distiller = build_distiller(method, student, teacher, options)
    batches = ArrayBatches(_arrays(), cfg.batch_size, torch.device("cpu"))
    metrics = fit(distiller, batches, cfg, checkpoint_dir=checkpoint_dir)
    if out is not None:
        out.append(distiller)
    return student, metrics


def test_same_seed_same_weights_and_it_learns():
    a, metrics = _train(CFG)
    b, _ = _train(CFG)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    assert metrics["train_accuracy"] > 0.6  # 3 easy classes, chance is 1/3


@pytest.mark.parametrize("method", ["ce", "hint"])  # hint: its connectors are restored too
def test_resume_mid_run_matches_an_uninterrupted_run(method, tmp_path, monkeypatch):
    runs = []
    straight, _ = _train(CFG, method=method, out=runs)
    import kdflow.training.trainer as trainer

    real_save, saves = trainer._save, []

    def save_then_die(uri, state):
        real_save(uri, state)
        saves.append(state["epoch"])
        if state["epoch"] == 0:
            raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(trainer, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(CFG, checkpoint_dir=str(tmp_path), method=method)
    monkeypatch.setattr(trainer, "_save", real_save)
    resumed, _ = _train(CFG, checkpoint_dir=str(tmp_path), method=method, out=runs)
    assert saves == [0]
    for (name, pa), (_, pb) in zip(runs[0].checkpoint_state().items(), runs[1].checkpoint_state().items(),
                                   strict=True):
        assert torch.equal(pa, pb), name
    assert (method == "hint") == any(k.startswith("connectors.") for k in runs[1].checkpoint_state())


def test_frozen_teacher_stays_in_eval_mode():
    teacher = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    distiller = build_distiller("kd", student, teacher, get_distiller_class("kd").Options())
    distiller.train()
    assert student.training and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert {id(p) for p in distiller.trainable_parameters()} == {id(p) for p in student.parameters()}
    # Online fallback: no cached logits in the batch -> the teacher's own, without gradients.
    out = distiller({"image": torch.rand(4, 3, 8, 8), "label": torch.tensor([0, 1, 2, 0])})
    assert out["loss"].requires_grad and out["output"].shape == (4, 3)


def test_divergence_is_reported_with_a_fix():
    with pytest.raises(KdflowError, match=r"(?s)training loss became nan.*lower train.lr"):
        _train(dataclasses.replace(CFG, lr=1e30))


def test_full_fp32_turns_tf32_off_and_restores_it():
    """cuDNN's default TF32 convolutions would make 'fp32' labels and accuracies reduced-precision."""
    from kdflow.training.device import full_fp32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        with full_fp32():
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_the_step_loop_does_not_wait_for_the_device(monkeypatch):
    """No host sync per step: reads of device values (item, bool, float, int, tolist) stay the same
    whether an epoch has 5 steps or 45 (on a GPU each would stall the queue)."""
    reads = {"n": 0}
    for method in ("item", "__bool__", "__float__", "__int__", "tolist"):
        real = getattr(torch.Tensor, method)

        def counted(self, *args, _real=real, **kwargs):
            reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)

    def reads_for(n_per_class: int, method: str) -> int:
        torch.manual_seed(0)
        student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
        teacher = Classifier(create_model("convnet_s", 3), (0.5,) * 3, (0.25,) * 3) if method != "ce" else None
        distiller = build_distiller(method, student, teacher, get_distiller_class(method).Options())
        batches = ArrayBatches(_arrays(n_per_class), 4, torch.device("cpu"))
        steps = batches.steps_per_epoch()
        reads["n"] = 0
        fit(distiller, batches, dataclasses.replace(CFG, epochs=1, warmup_epochs=0, batch_size=4))
        return reads["n"], steps

    for method in ("ce", "kd"):
        few, few_steps = reads_for(2, method)
        many, many_steps = reads_for(15, method)
        assert many_steps >= 5 * few_steps
        assert many == few, f"{method}: {few} reads in {few_steps} steps, {many} in {many_steps}"
