"""One epoch's running sums on the device, and the divergence check, read by the host only when needed.

A .item() or a tensor in an ``if`` per step makes the host wait for the GPU queue to drain, which
leaves the GPU idle while Python prepares the next step; so nothing here is read per step. Under
torchrun the sums are all-reduced, so the metrics are those of one process.
"""

from __future__ import annotations

import torch

from kdflow.training import distributed
from kdflow.training.distributed import DistContext
from kdflow.util.errors import KdflowError

_NO_STEP = 2**62  # "no bad step" when the ranks take the minimum of their first bad steps


class EpochSums:
    """The sums of one epoch, on the device: read once, at its end (and at mid-epoch checkpoints)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}  # name -> sum over samples of the term, float64 [] on device
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0  # samples this rank has stepped on (batch sizes are known on the host)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
        self.bad_loss = torch.zeros((), device=device)

    def add(self, step: int, out: dict[str, torch.Tensor], label: torch.Tensor) -> None:
        loss = out["loss"].detach()
        newly_bad = ~torch.isfinite(loss) & (self.first_bad < 0)
        self.first_bad = torch.where(newly_bad, step, self.first_bad)
        self.bad_loss = torch.where(newly_bad, loss.float(), self.bad_loss)
        n = label.shape[0]
        self.seen += n
        self.correct += (out["output"].detach().argmax(-1) == label).sum()
        for name, value in out.items():
            if name != "output":
                term = value.detach().double() * n  # float64: long epochs sum many terms
                self.sums[name] = self.sums[name] + term if name in self.sums else term

    def totals(self, ctx: DistContext | None) -> tuple[list[str], torch.Tensor]:
        """Names and float64 [len(names) + 2] (the sums, correct, seen), summed over the ranks."""
        names = list(self.sums)
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.device)
        stacked = torch.stack([*(self.sums[k] for k in names), self.correct.double(), seen])
        return names, distributed.all_reduce_sum(stacked, ctx)

    def restore(self, names: list[str], totals: torch.Tensor) -> None:
        """Continue from a mid-epoch checkpoint's (global) totals."""
        totals = totals.to(self.device, torch.float64)
        self.sums = {k: totals[i] for i, k in enumerate(names)}
        self.correct = totals[-2].round().long()
        self.seen = int(totals[-1])

    def raise_if_diverged(self, epoch: int, ctx: DistContext | None = None) -> None:
        """One host read of the divergence flag; the error names the first step whose loss was not
        finite. (Steps after it ran on NaN weights, but nothing is checkpointed before this check.)
        With several processes the ranks agree on the earliest bad step first, so that all of them
        raise together."""
        first_bad, bad_loss = self.first_bad, self.bad_loss
        if ctx is None or not ctx.active:
            step = int(first_bad)
            if step >= 0:
                raise KdflowError(f"training loss became {float(bad_loss)} at epoch {epoch}, step {step}",
                                  "lower train.lr, or check the data and teacher for NaN/inf values")
            return
        key = torch.where(first_bad >= 0, first_bad, torch.full_like(first_bad, _NO_STEP)).reshape(1)
        step = int(distributed.all_reduce_min(key, ctx))
        if step != _NO_STEP:
            value = f"{float(bad_loss)}" if int(first_bad) == step else "not finite (on another rank)"
            raise KdflowError(f"training loss became {value} at epoch {epoch}, step {step}",
                              "lower train.lr, or check the data and teacher for NaN/inf values")


def epoch_metrics(names: list[str], totals: list[float]) -> dict[str, float]:
    """Per-sample means of an epoch's sums (``EpochSums.totals``, read to the host): ``train_<term>``
    and ``train_accuracy``."""
    seen = max(totals[-1], 1.0)
    metrics = {f"train_{k}": v / seen for k, v in zip(names, totals)}
    metrics["train_accuracy"] = totals[-2] / seen
    return metrics
