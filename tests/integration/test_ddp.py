"""Data-parallel training under torchrun: 2 gloo processes end with the weights of 1 process on the same
global batch, and a failing or diverging rank ends the launch (the launcher's parts in one process:
tests/unit/test_ddp.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from kdflow.config import AugmentConfig, TrainConfig
from kdflow.data.shards import SplitArrays
from kdflow.training import distributed, launch
from tests.helpers import class_arrays

ROOT = Path(__file__).resolve().parents[2]
TINY = "test_ddp_mlp"  # a student without BatchNorm: DDP equals one process exactly only without it
# A checkpoint mid-epoch too: its all-reduce of the partial sums is a collective every rank joins.
CFG = TrainConfig(epochs=2, batch_size=8, lr=0.1, seed=3, warmup_epochs=1, device="cpu", checkpoint_every_steps=2)
AUG = AugmentConfig(crop="pad", padding=2, flip=True)  # fresh views per global batch, sliced per rank


class _Mlp(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.linear = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor):
        """The registry's contract (it stays registered for the session): (logits, [stage features])."""
        feature = torch.relu(self.conv(x))  # [B, 6, H, W]
        pooled = feature.mean(dim=(2, 3))  # [B, 6]
        return self.linear(pooled), [feature, pooled]


def _register() -> None:
    from kdflow.models.registry import list_models, register_model

    if TINY not in list_models():
        register_model(TINY)(lambda num_classes, in_channels=3: _Mlp(num_classes, in_channels))


def _arrays(n_per_class: int = 12) -> SplitArrays:
    return class_arrays(n_per_class)


def _distiller(method: str = "ce"):
    from kdflow.distillers import build_distiller, get_distiller_class
    from kdflow.models import Classifier, create_model

    _register()
    torch.manual_seed(0)
    student = Classifier(create_model(TINY, 3), (0.5,) * 3, (0.25,) * 3)
    # kd: the frozen teacher runs online (no cached labels); its BatchNorm is in eval mode, so it
    # gives every rank's rows the same logits as one process, and DDP must leave it out.
    teacher = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3) if method == "kd" else None
    return build_distiller(method, student, teacher, get_distiller_class(method).Options())


class _Counting:
    """A batch source that counts the rows it hands out (to show each rank gets only its slice)."""

    def __init__(self, inner):
        self.inner, self.rows = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def batches(self, *args, **kwargs):
        for batch in self.inner.batches(*args, **kwargs):
            self.rows += len(batch["label"])
            yield batch


def train_worker(out: str, checkpoint_dir: str = "", lr: float = CFG.lr, method: str = "ce") -> dict:
    """One rank (or the only process): train, then rank 0 saves the student's weights to ``out``."""
    from kdflow.training.batches import ArrayBatches
    from kdflow.training.trainer import fit

    torch.set_num_threads(1)
    ctx = distributed.init(torch.device("cpu"))
    try:
        distiller = _distiller(method)
        batches = _Counting(ArrayBatches(_arrays(), CFG.batch_size, ctx.device, augmentation=AUG))
        metrics = fit(distiller, batches, CFG.replace(lr=lr), dist=ctx,
                      checkpoint_dir=checkpoint_dir or None)
        if ctx.is_main:
            torch.save(distiller.student.state_dict(), out)
        rows = distributed.all_reduce_sum(torch.tensor([batches.rows]), ctx)
        return {"metrics": metrics, "world": ctx.world, "rows": int(rows)}
    finally:
        distributed.destroy(ctx)


def fail_on_rank_1() -> None:
    """Rank 1 exits while rank 0 waits for it in a collective: torchrun must end rank 0 too."""
    import os

    ctx = distributed.init(torch.device("cpu"))
    if os.environ["RANK"] == "1":
        raise SystemExit(3)
    distributed.all_reduce_sum(torch.ones(1), ctx)


@pytest.mark.parametrize("method", ["ce", "kd"])
def test_two_gloo_processes_end_with_the_weights_of_one(method, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the workers import this module as tests.integration.test_ddp
    one = train_worker(str(tmp_path / "one.pt"), method=method)
    two = launch.distributed_call(2, "tests.integration.test_ddp:train_worker",
                                  {"out": str(tmp_path / "two.pt"), "checkpoint_dir": str(tmp_path / "ckpt"),
                                   "method": method})
    assert one["world"] == 1 and two["world"] == 2
    # 36 samples, global batch 8: 32 per epoch in all; each rank takes 4 of every 8 (and 4 more for
    # the probe of unused parameters), not the whole batch each.
    assert one["rows"] == CFG.epochs * 32 and two["rows"] == CFG.epochs * 32 + 2 * 4
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-6), (name, (a[name] - b[name]).abs().max())
    for name, initial in _distiller().student.named_parameters():
        assert not torch.equal(a[name], initial), f"{name} did not train"
    # Epoch metrics are sums over both ranks: the figures of the single process.
    for key, value in one["metrics"].items():
        assert two["metrics"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert (tmp_path / "ckpt" / "last.pt").exists()  # written by rank 0


def test_a_failing_rank_fails_the_launch(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with pytest.raises(launch.WorkersFailed) as info:
        launch.distributed_call(2, "tests.integration.test_ddp:fail_on_rank_1", {})
    assert info.value.returncode != 0


def test_divergence_stops_every_rank(tmp_path, monkeypatch):
    """The ranks agree on the first bad step before raising: none is left waiting for the others."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with pytest.raises(launch.WorkersFailed):
        launch.distributed_call(2, "tests.integration.test_ddp:train_worker", {"out": str(tmp_path / "x.pt"), "lr": 1e30})
    assert not (tmp_path / "x.pt").exists()
