"""The training loop, shared by every distiller and by teacher bootstrap.

It knows nothing of MLflow or KFP: per-epoch metrics go to an ``on_epoch`` callback, and a
checkpoint (model, optimizer, scheduler, RNG, position, identity) is written after every epoch, and
every ``train.checkpoint_every_steps`` steps within one, so a preempted run resumes where it stopped,
to the same weights, instead of starting over; only from a checkpoint of the same run (see
kdflow.training.checkpoints: identity, location, determinism on CPU vs CUDA).

Under torchrun (``dist``: a ``DistContext`` with more than one process) each rank trains on its
slice of every global batch in DistributedDataParallel; the epoch's sums are all-reduced, so the
metrics are those of one process, and rank 0 alone validates, reports and checkpoints.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from kdflow.config import TrainConfig
from kdflow.distillers.base import Distiller
from kdflow.util.progress import Progress
from kdflow.storage import join
from kdflow.training import checkpoints, distributed
from kdflow.training.batches import ArrayBatches
from kdflow.training.checkpoints import CHECKPOINT
from kdflow.training.checkpoints import save as _save
from kdflow.training.distributed import DistContext
from kdflow.training.epoch import EpochSums, epoch_metrics
from kdflow.training.optim import make_optimizer
from kdflow.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
CHECK_EVERY = 50  # steps between two reads of the divergence flag (the only host syncs within an epoch)
_COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper adds to every state-dict key


class Batches(Protocol):
    """What ``fit`` needs of a batch source (``ArrayBatches``, streaming ``ShardBatches``)."""

    device: torch.device
    batch_size: int

    def example(self, n: int = 8) -> torch.Tensor: ...

    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int | None = None, seed: int = 0, start_step: int = 0, rank: int = 0,
                world: int = 1) -> Iterator[dict[str, Any]]: ...


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _autocast(device: torch.device):
    # bf16 needs no loss scaling; on CPU autocast would only slow these small convnets down.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def strip_compiled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict without torch.compile's ``_orig_mod.`` in its keys: what an uncompiled model loads."""
    return {k.replace(_COMPILED_PREFIX, ""): v for k, v in state.items()}


def _unused_parameters(distiller: Distiller, batch: dict[str, Any], device: torch.device) -> list[str]:
    """Trainable parameters that a training step on ``batch`` leaves without a gradient (DDP must then
    look for them every step). One forward and backward that change nothing: gradients are returned,
    not stored, and the BatchNorm statistics and the RNG are put back."""
    named = [(n, p) for n, p in distiller.named_parameters() if p.requires_grad and not n.startswith("teacher.")]
    buffers = {n: b.detach().clone() for n, b in distiller.named_buffers()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _autocast(device):
        out = distiller(dict(batch))
        grads = torch.autograd.grad(out["loss"], [p for _, p in named], allow_unused=True)
    with torch.no_grad():
        for n, b in distiller.named_buffers():
            b.copy_(buffers[n])
    return [n for (n, _), g in zip(named, grads) if g is None]


def _first_batch(train: Batches, cfg: TrainConfig, epoch: int, step: int, ctx: DistContext) -> dict[str, Any]:
    it = train.batches(epoch=epoch, seed=cfg.seed, start_step=step, rank=ctx.rank, world=ctx.world)
    try:
        return next(iter(it))
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a streaming source stops its prefetch


def _channels_last(distiller: Distiller, device: torch.device, enabled: bool) -> bool:
    """NHWC weights for the student and a method's modules on CUDA, where cuDNN's tensor-core
    convolutions want NHWC (otherwise they transpose around each conv). Not on the CPU: there it is
    not reliably faster for these small networks, and it changes the order of the convolution sums,
    so CPU results (the reference numbers tests compare against) would depend on the setting."""
    if not enabled or device.type != "cuda":
        return False
    for name, child in distiller.named_children():
        if name != "teacher":  # an exported teacher has no .to(memory_format=)
            child.to(memory_format=torch.channels_last)
    return True


def _compile_student(distiller: Distiller, enabled: bool) -> nn.Module | None:
    """Swap the distiller's student for ``torch.compile(student)``; returns the eager student to put
    back, or None when nothing was compiled. The loss and the distiller stay eager (a batch holds
    objects such as SoftRows that would break the graph); the student is where the FLOPs are."""
    if not enabled:
        return None
    if distiller.student_layers():
        log.warning("train.compile is ignored for %s: its feature taps are forward hooks, which compiled "
                    "code does not call", type(distiller).__name__)
        return None
    eager = distiller.student
    distiller.student = torch.compile(eager)
    return eager


@dataclass
class _Position:
    """Where training starts: after a checkpoint's last finished epoch (and steps into the next)."""

    epoch: int = 0  # the first epoch to train
    step: int = 0  # steps of that epoch already done
    metrics: dict[str, float] = field(default_factory=dict)  # the last finished epoch's
    partial: dict[str, Any] | None = None  # that epoch's sums so far, at a mid-epoch checkpoint


@dataclass
class _Run:
    """What one ``fit`` call trains with, fixed before its first step."""

    distiller: Distiller
    train: Batches | ArrayBatches
    cfg: TrainConfig
    ctx: DistContext
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    steps: int  # per epoch
    checkpoint_dir: str | None  # None: no checkpoints
    identity: dict[str, Any]  # recorded in every checkpoint, checked on resume
    channels_last: bool

    @property
    def device(self) -> torch.device:
        return self.train.device

    @property
    def ckpt_uri(self) -> str | None:
        return join(self.checkpoint_dir, CHECKPOINT) if self.checkpoint_dir else None

    def resume(self, state: dict[str, Any] | None) -> _Position:
        """Load a checkpoint's state (checked to be this run's) into the model, optimizer, scheduler and
        RNG; the position it records. No checkpoint: the start."""
        if state is None:
            return _Position()
        checkpoints.check(self.checkpoint_dir, state, self.identity)
        self.distiller.load_checkpoint_state(strip_compiled(state["model"]))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.device)
        at = _Position(state["epoch"] + 1, state.get("step", 0), state["metrics"], state.get("partial"))
        log.info("resuming from %s at epoch %d, step %d", self.ckpt_uri, at.epoch, at.step)
        resident = isinstance(self.train, ArrayBatches)
        if at.step and state.get("resident") not in (None, resident):
            log.warning("the checkpoint was trained on a %s split and this run %s it: the rest of epoch %d "
                        "visits the samples in another order (leave train.resident at auto to keep it)",
                        "resident" if state["resident"] else "streamed", "holds" if resident else "streams",
                        at.epoch + 1)
        return at

    def checkpoint(self, epoch_done: int, step: int, metrics: dict[str, float], partial: dict | None) -> None:
        """``epoch_done``: the last finished epoch; ``step``: steps done in the next one (0 at an epoch end)."""
        if self.ckpt_uri and self.ctx.is_main:
            device = self.device
            _save(self.ckpt_uri, {"identity": self.identity, "epoch": epoch_done, "step": step, "metrics": metrics,
                                  "partial": partial,
                                  "model": strip_compiled(self.distiller.checkpoint_state()),
                                  "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                                  "rng": torch.get_rng_state(),
                                  "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                                  # The two kinds of batches shuffle differently: a resumed run must use this one.
                                  "resident": isinstance(self.train, ArrayBatches)})

    def prepare_ddp(self, at: _Position) -> tuple[bool, bool]:
        """(BatchNorm synced across the ranks, DDP must look for unused parameters every step)."""
        ctx, cfg, device = self.ctx, self.cfg, self.device
        # BatchNorm over the global batch: on CUDA only (SyncBatchNorm has no CPU kernel); see distributed.
        synced_bn = (ctx.active and cfg.sync_batchnorm and device.type == "cuda"
                     and distributed.use_sync_batchnorm(self.distiller))
        if ctx.active and cfg.sync_batchnorm and device.type != "cuda" and ctx.is_main:
            log.warning("train.sync_batchnorm needs CUDA: on the CPU each process normalises with its own slice")
        find_unused = False
        if ctx.active and at.epoch < cfg.epochs:
            batch = _first_batch(self.train, cfg, at.epoch, at.step, ctx)
            unused = _unused_parameters(self.distiller, batch, device)
            if unused:
                log.info("trainable parameters without a gradient in a step: %s", ", ".join(unused[:10]))
            flag = distributed.all_reduce_sum(torch.tensor([float(len(unused))], device=device), ctx)
            find_unused = bool(flag.item() > 0)  # once per run
        return synced_bn, find_unused

    def epoch(self, model: nn.Module, epoch: int, at: _Position, metrics: dict[str, float]) -> EpochSums:
        """Train one epoch (from ``at.step`` when it is the resumed one); its sums, checked for divergence.
        ``metrics``: the last finished epoch's, recorded by mid-epoch checkpoints."""
        cfg, ctx, device = self.cfg, self.ctx, self.device
        self.distiller.train()
        self.distiller.start_epoch(epoch)
        acc = EpochSums(device)
        skip = at.step if epoch == at.epoch else 0
        if at.partial is not None and epoch == at.epoch and ctx.is_main:
            acc.restore(list(at.partial["names"]), at.partial["totals"])  # the other ranks add zeros
        every = cfg.checkpoint_every_steps if self.ckpt_uri else 0
        bar = (Progress((self.steps - skip) * self.train.batch_size, f"epoch {epoch + 1}/{cfg.epochs}", "img")
               if ctx.is_main else None)
        batches = self.train.batches(epoch=epoch, seed=cfg.seed, start_step=skip, rank=ctx.rank, world=ctx.world)
        for step, batch in enumerate(batches, start=skip):
            if self.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            with _autocast(device):
                out = model(batch)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            self.optimizer.step()
            self.scheduler.step()
            acc.add(step, out, batch["label"])
            if bar is not None:
                bar.advance(batch["label"].shape[0] * ctx.world)  # a shape: known on the host
            if (step + 1) % CHECK_EVERY == 0:
                acc.raise_if_diverged(epoch, ctx)
            if every and (step + 1) % every == 0 and step + 1 < self.steps:
                acc.raise_if_diverged(epoch, ctx)  # never checkpoint NaN weights
                names, totals = acc.totals(ctx)  # a copy: the running sums stay this rank's own
                self.checkpoint(epoch - 1, step + 1, metrics, {"names": names, "totals": totals.cpu()})
        if bar is not None:
            bar.close()
        acc.raise_if_diverged(epoch, ctx)
        return acc

    def report(self, epoch: int, acc: EpochSums, validate: Callable[[], dict[str, float]] | None,
               on_epoch: EpochCallback | None) -> dict[str, float]:
        """The epoch's metrics (one host read), validated, logged and reported on rank 0."""
        names, totals = acc.totals(self.ctx)
        metrics = epoch_metrics(names, totals.tolist())  # the epoch's one read
        metrics["lr"] = self.optimizer.param_groups[0]["lr"]
        if self.ctx.is_main:
            if validate is not None:
                self.distiller.eval()
                metrics.update(validate())
            log.info("epoch %d/%d %s", epoch + 1, self.cfg.epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v)))
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        return metrics


def _start(distiller: Distiller, train: Batches | ArrayBatches, cfg: TrainConfig, ctx: DistContext,
           checkpoint_dir: str | None, checkpoint_identity: dict[str, Any] | None) -> _Run:
    """The model on its device and prepared, its optimizer and schedule, and where it checkpoints."""
    device = train.device
    seed_everything(cfg.seed)
    distiller.to(device)
    # Before the optimizer and any checkpoint: a method may build modules sized by the features.
    distiller.prepare(train.example())
    channels_last = _channels_last(distiller, device, cfg.channels_last)
    optimizer = make_optimizer(list(distiller.trainable_parameters()), cfg)
    steps = train.steps_per_epoch()
    total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))
    identity = {"run": checkpoint_identity or {},
                "structure": checkpoints.structure(cfg, steps, train.batch_size, ctx.world)}
    return _Run(distiller, train, cfg, ctx, optimizer, scheduler, steps, checkpoint_dir, identity, channels_last)


def fit(
    distiller: Distiller,
    train: Batches | ArrayBatches,
    cfg: TrainConfig,
    *,
    validate: Callable[[], dict[str, float]] | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: str | None = None,
    checkpoint_identity: dict[str, Any] | None = None,
    resume_state: dict[str, Any] | None = None,
    dist: DistContext | None = None,
) -> dict[str, float]:
    """Train ``distiller``'s trainable parameters for ``cfg.epochs``; returns the last epoch's metrics.

    ``dist``: this process's place under torchrun (None: the only process). Every rank must call
    ``fit`` with the same arguments; ``validate`` and ``on_epoch`` run on rank 0 only.
    ``checkpoint_dir``: checkpoint there, and resume from the checkpoint found there, but only when
    its identity is ``checkpoint_identity`` (what the caller knows of the run) and this call's
    schedule; any other raises ``CheckpointError``. A checkpoint of a finished run trains nothing.
    ``resume_state``: that checkpoint, when the caller has read it already (``checkpoints.read``;
    checked here all the same), so that a resumed run does not download it twice.
    """
    ctx = dist if dist is not None else DistContext(device=train.device)
    run = _start(distiller, train, cfg, ctx, checkpoint_dir, checkpoint_identity)
    state = resume_state if resume_state is not None else checkpoints.read(checkpoint_dir, train.device)
    at = run.resume(state)
    synced_bn, find_unused = run.prepare_ddp(at)
    eager_student = _compile_student(distiller, cfg.compile)
    metrics = at.metrics
    try:
        model: nn.Module = distributed.wrap(distiller, ctx, find_unused) if ctx.active else distiller
        for epoch in range(at.epoch, cfg.epochs):
            acc = run.epoch(model, epoch, at, metrics)
            metrics = run.report(epoch, acc, validate, on_epoch)
            run.checkpoint(epoch, 0, metrics, None)
    finally:
        if eager_student is not None:
            distiller.student = eager_student
        if synced_bn:
            distributed.revert_sync_batchnorm(distiller)
    return metrics
