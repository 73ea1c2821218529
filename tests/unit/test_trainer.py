"""The training loop: seeded, resumable to the same weights, and loud about divergence."""


import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.util.errors import KdflowError
from kdflow.models import Classifier, create_model
from kdflow.training.batches import ArrayBatches
from kdflow.training.trainer import fit
from tests.helpers import class_arrays, count_device_reads

CFG = TrainConfig(epochs=3, batch_size=8, lr=0.05, seed=1, warmup_epochs=1)


def _arrays(n_per_class=12):
    return class_arrays(n_per_class)


HINT = {"pairs": [{"teacher": "stages.1", "student": "stages.0", "weight": 1.0}]}


def _train(cfg, checkpoint_dir=None, method="ce", out=None):

    torch.manual_seed(0)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    teacher = Classifier(create_model("convnet_s", 3), (0.5,) * 3, (0.25,) * 3) if method != "ce" else None
    options = get_distiller_class(method).Options.from_dict(HINT if method == "hint" else {})
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
        _train(CFG.replace(lr=1e30))


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
    reads = count_device_reads(monkeypatch)

    def reads_for(n_per_class: int, method: str) -> int:
        torch.manual_seed(0)
        student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
        teacher = Classifier(create_model("convnet_s", 3), (0.5,) * 3, (0.25,) * 3) if method != "ce" else None
        distiller = build_distiller(method, student, teacher, get_distiller_class(method).Options())
        batches = ArrayBatches(_arrays(n_per_class), 4, torch.device("cpu"))
        steps = batches.steps_per_epoch()
        reads["n"] = 0
        fit(distiller, batches, CFG.replace(epochs=1, warmup_epochs=0, batch_size=4))
        return reads["n"], steps

    for method in ("ce", "kd"):
        few, few_steps = reads_for(2, method)
        many, many_steps = reads_for(15, method)
        assert many_steps >= 5 * few_steps
        assert many == few, f"{method}: {few} reads in {few_steps} steps, {many} in {many_steps}"


def _train_aug(cfg, checkpoint_dir=None):
    """Cross-entropy with fresh augmented views (they depend on the step: a resume must redraw them)."""
    from kdflow.config import AugmentConfig

    torch.manual_seed(0)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    distiller = build_distiller("ce", student, None, get_distiller_class("ce").Options())
    batches = ArrayBatches(_arrays(), cfg.batch_size, torch.device("cpu"),
                           augmentation=AugmentConfig(crop="pad", padding=2, flip=True))
    history = {}  # epoch -> its metrics
    fit(distiller, batches, cfg, checkpoint_dir=checkpoint_dir, on_epoch=history.__setitem__)
    return student, history


def test_resume_mid_epoch_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """36 samples, batch 8: 4 steps an epoch, a checkpoint every 2. The run dies at the 7th optimizer
    step (epoch 1, step 2), after the checkpoint at epoch 1, step 2: the resumed run redoes that
    step from the checkpoint and ends with the same weights and the same epoch sums."""
    import kdflow.training.trainer as trainer

    cfg = CFG.replace(checkpoint_every_steps=2)
    straight, straight_history = _train_aug(cfg)

    real_make, real_save, saved = trainer.make_optimizer, trainer._save, []

    def dying_optimizer(params, train_cfg):
        opt = real_make(params, train_cfg)
        calls = {"n": 0}

        def before_step(*_):
            calls["n"] += 1
            if calls["n"] == 7:
                raise KeyboardInterrupt("preempted")

        opt.register_step_pre_hook(before_step)
        return opt

    def recording_save(uri, state):
        saved.append((state["epoch"], state["step"]))
        real_save(uri, state)

    monkeypatch.setattr(trainer, "make_optimizer", dying_optimizer)
    monkeypatch.setattr(trainer, "_save", recording_save)
    with pytest.raises(KeyboardInterrupt):
        _train_aug(cfg, checkpoint_dir=str(tmp_path))
    assert saved == [(-1, 2), (0, 0), (0, 2)]  # mid-epoch 0, end of epoch 0, mid-epoch 1
    monkeypatch.setattr(trainer, "make_optimizer", real_make)
    resumed, resumed_history = _train_aug(cfg, checkpoint_dir=str(tmp_path))
    assert saved[3:] == [(1, 0), (1, 2), (2, 0)]  # resumed at epoch 1, step 2
    for (name, pa), (_, pb) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    # Epoch 1's sums: 2 steps from the checkpoint, 2 after the resume (to float64 rounding).
    assert sorted(resumed_history) == [1, 2]
    for epoch in (1, 2):
        assert resumed_history[epoch] == pytest.approx(straight_history[epoch], rel=1e-12), epoch


def test_a_checkpoint_without_an_identity_is_not_resumed(tmp_path, monkeypatch):
    """A checkpoint written before checkpoints recorded whose run they are cannot be told apart from
    another run's: refused, naming the file and the fix, rather than continued."""
    import kdflow.training.trainer as trainer
    from kdflow.training.checkpoints import CheckpointError

    real_save = trainer._save

    def old_format_then_die(uri, state):
        del state["identity"], state["step"], state["partial"]
        real_save(uri, state)
        raise KeyboardInterrupt("preempted")

    monkeypatch.setattr(trainer, "_save", old_format_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(CFG, checkpoint_dir=str(tmp_path))
    monkeypatch.setattr(trainer, "_save", real_save)
    with pytest.raises(CheckpointError, match="records none") as err:
        _train(CFG, checkpoint_dir=str(tmp_path))
    assert str(tmp_path / "last.pt") in err.value.fix and "delete" in err.value.fix


def test_each_epoch_reports_its_progress(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="kdflow.util.progress"):
        _train(CFG)
    lines = [r.getMessage() for r in caplog.records if r.name == "kdflow.util.progress"]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all("32/32 img (100%)" in line and "img/s" in line for line in lines)


def test_compiled_keys_are_stripped():
    from kdflow.training.trainer import strip_compiled

    state = {"student._orig_mod.net.linear.weight": torch.zeros(1), "connectors.0.weight": torch.ones(1)}
    assert set(strip_compiled(state)) == {"student.net.linear.weight", "connectors.0.weight"}


def test_the_optimizer_step_is_batched():
    """foreach on the CPU (fused kernels are for CUDA); fused on CUDA."""
    from kdflow.training.trainer import make_optimizer

    for name in ("sgd", "adamw"):
        net = create_model("convnet_xs", 3)
        opt = make_optimizer(net.parameters(), CFG.replace(optimizer=name))
        assert all(g["foreach"] and not g.get("fused") for g in opt.param_groups), name
        if torch.cuda.is_available():
            opt = make_optimizer(net.cuda().parameters(), CFG.replace(optimizer=name))
            assert all(g["fused"] for g in opt.param_groups), name
