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
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from kdflow.config import TrainConfig
from kdflow.distillers.base import Distiller
from kdflow.errors import KdflowError
from kdflow.progress import Progress
from kdflow.storage import join
from kdflow.training import augment, checkpoints, distributed
from kdflow.training.batches import ArrayBatches, to_float_images
from kdflow.training.checkpoints import CHECKPOINT, CheckpointError  # noqa: F401 (part of this module's API)
from kdflow.training.checkpoints import save as _save
from kdflow.training.device import full_fp32
from kdflow.training.distributed import DistContext
from kdflow.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
CHECK_EVERY = 50  # steps between two reads of the divergence flag (the only host syncs within an epoch)
_NO_STEP = 2**62  # "no bad step" when the ranks take the minimum of their first bad steps
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


def _step_implementation(params: list[torch.Tensor]) -> dict[str, bool]:
    """fused on CUDA: the whole update of every parameter in one kernel (SGD and AdamW have one);
    elsewhere foreach: a few batched ops over all the tensors instead of a Python loop per tensor."""
    if params and all(p.is_cuda and p.is_floating_point() for p in params):
        return {"fused": True}
    return {"foreach": True}


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW, with no weight decay on biases and norm parameters.

    Parameters with ndim <= 1 (every bias, BatchNorm/LayerNorm weight and bias) get weight_decay 0:
    regularise only the conv/linear weights, to avoid overfitting, while biases and the norm layers'
    scale and shift are left free ("Bag of Tricks for Image Classification with Convolutional Neural
    Networks", He et al., CVPR 2019, sec. 3.1, "No bias decay"). Conv/linear weights (ndim > 1) keep
    ``cfg.weight_decay``. Empty groups are left out. Fused on CUDA, foreach elsewhere.
    """
    params = list(params)  # may be a generator; it is walked twice below
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    impl = _step_implementation(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0, **impl)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)


def _autocast(device: torch.device):
    # bf16 needs no loss scaling; on CPU autocast would only slow these small convnets down.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def strip_compiled(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict without torch.compile's ``_orig_mod.`` in its keys: what an uncompiled model loads."""
    return {k.replace(_COMPILED_PREFIX, ""): v for k, v in state.items()}


def _raise_if_diverged(first_bad: torch.Tensor, bad_loss: torch.Tensor, epoch: int,
                       ctx: DistContext | None = None) -> None:
    """One host read of the divergence flag; the error names the first step whose loss was not finite.
    (Steps after it ran on NaN weights, but nothing is checkpointed before this check.) With several
    processes the ranks agree on the earliest bad step first, so that all of them raise together."""
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


class _Epoch:
    """The sums of one epoch, on the device: read once, at its end (and at mid-epoch checkpoints).

    A .item() or a tensor in an ``if`` per step makes the host wait for the GPU queue to drain,
    which leaves the GPU idle while Python prepares the next step; so nothing here is read per step.
    """

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


def _metrics(names: list[str], totals: list[float]) -> dict[str, float]:
    seen = max(totals[-1], 1.0)
    metrics = {f"train_{k}": v / seen for k, v in zip(names, totals)}
    metrics["train_accuracy"] = totals[-2] / seen
    return metrics


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
    device = train.device
    seed_everything(cfg.seed)
    distiller.to(device)
    # Before the optimizer and any checkpoint: a method may build modules sized by the features.
    distiller.prepare(train.example())
    channels_last = _channels_last(distiller, device, cfg.channels_last)
    optimizer = make_optimizer(list(distiller.trainable_parameters()), cfg)
    steps = train.steps_per_epoch()
    total = cfg.epochs * steps
    warmup = cfg.warmup_epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))

    start_epoch, start_step, metrics, partial = 0, 0, {}, None
    ckpt_uri = join(checkpoint_dir, CHECKPOINT) if checkpoint_dir else None
    identity = {"run": checkpoint_identity or {},
                "structure": checkpoints.structure(cfg, steps, train.batch_size, ctx.world)}
    state = resume_state if resume_state is not None else checkpoints.read(checkpoint_dir, device)
    if state is not None:
        checkpoints.check(checkpoint_dir, state, identity)
        distiller.load_checkpoint_state(strip_compiled(state["model"]))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
        start_epoch, start_step, metrics = state["epoch"] + 1, state.get("step", 0), state["metrics"]
        partial = state.get("partial")
        log.info("resuming from %s at epoch %d, step %d", ckpt_uri, start_epoch, start_step)
        if start_step and state.get("resident") not in (None, isinstance(train, ArrayBatches)):
            log.warning("the checkpoint was trained on a %s split and this run %s it: the rest of epoch %d "
                        "visits the samples in another order (leave train.resident at auto to keep it)",
                        "resident" if state["resident"] else "streamed",
                        "holds" if isinstance(train, ArrayBatches) else "streams", start_epoch + 1)

    def checkpoint(epoch_done: int, step: int, partial_totals: dict | None) -> None:
        """``epoch_done``: the last finished epoch; ``step``: steps done in the next one (0 at an epoch end)."""
        if ckpt_uri and ctx.is_main:
            _save(ckpt_uri, {"identity": identity, "epoch": epoch_done, "step": step, "metrics": metrics,
                             "partial": partial_totals,
                             "model": strip_compiled(distiller.checkpoint_state()),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": torch.get_rng_state(),
                             "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                             # The two kinds of batches shuffle differently: a resumed run must use this one.
                             "resident": isinstance(train, ArrayBatches)})

    # BatchNorm over the global batch: on CUDA only (SyncBatchNorm has no CPU kernel); see distributed.
    synced_bn = (ctx.active and cfg.sync_batchnorm and device.type == "cuda"
                 and distributed.use_sync_batchnorm(distiller))
    if ctx.active and cfg.sync_batchnorm and device.type != "cuda" and ctx.is_main:
        log.warning("train.sync_batchnorm needs CUDA: on the CPU each process normalises with its own slice")
    find_unused = False
    if ctx.active and start_epoch < cfg.epochs:
        unused = _unused_parameters(distiller, _first_batch(train, cfg, start_epoch, start_step, ctx), device)
        if unused:
            log.info("trainable parameters without a gradient in a step: %s", ", ".join(unused[:10]))
        flag = distributed.all_reduce_sum(torch.tensor([float(len(unused))], device=device), ctx)
        find_unused = bool(flag.item() > 0)  # once per run
    eager_student = _compile_student(distiller, cfg.compile)
    try:
        model: nn.Module = distributed.wrap(distiller, ctx, find_unused) if ctx.active else distiller
        every = cfg.checkpoint_every_steps if ckpt_uri else 0
        for epoch in range(start_epoch, cfg.epochs):
            distiller.train()
            distiller.start_epoch(epoch)
            acc = _Epoch(device)
            skip = start_step if epoch == start_epoch else 0
            if partial is not None and epoch == start_epoch and ctx.is_main:
                acc.restore(list(partial["names"]), partial["totals"])  # the other ranks add zeros
            bar = (Progress((steps - skip) * train.batch_size, f"epoch {epoch + 1}/{cfg.epochs}", "img")
                   if ctx.is_main else None)
            batches = train.batches(epoch=epoch, seed=cfg.seed, start_step=skip, rank=ctx.rank, world=ctx.world)
            for step, batch in enumerate(batches, start=skip):
                if channels_last:
                    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                with _autocast(device):
                    out = model(batch)
                optimizer.zero_grad(set_to_none=True)
                out["loss"].backward()
                optimizer.step()
                scheduler.step()
                acc.add(step, out, batch["label"])
                if bar is not None:
                    bar.advance(batch["label"].shape[0] * ctx.world)  # a shape: known on the host
                if (step + 1) % CHECK_EVERY == 0:
                    _raise_if_diverged(acc.first_bad, acc.bad_loss, epoch, ctx)
                if every and (step + 1) % every == 0 and step + 1 < steps:
                    _raise_if_diverged(acc.first_bad, acc.bad_loss, epoch, ctx)  # never checkpoint NaN weights
                    names, totals = acc.totals(ctx)  # a copy: the running sums stay this rank's own
                    checkpoint(epoch - 1, step + 1, {"names": names, "totals": totals.cpu()})
            if bar is not None:
                bar.close()
            _raise_if_diverged(acc.first_bad, acc.bad_loss, epoch, ctx)
            names, totals = acc.totals(ctx)
            metrics = _metrics(names, totals.tolist())  # the epoch's one read
            metrics["lr"] = optimizer.param_groups[0]["lr"]
            if ctx.is_main:
                if validate is not None:
                    distiller.eval()
                    metrics.update(validate())
                log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                         " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v)))
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
            checkpoint(epoch, 0, None)
    finally:
        if eager_student is not None:
            distiller.student = eager_student
        if synced_bn:
            distributed.revert_sync_batchnorm(distiller)
    return metrics


@torch.no_grad()
def predict_images(model: torch.nn.Module, images_u8: torch.Tensor, batch_size: int,
                   params: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of ``model`` on uint8 images [N, H, W, 3] (rendered as views ``params`` [N, 5] when
    given), in batches: float32 [N, C] on the images' device.

    In full fp32 (no autocast, no TF32): reported accuracies and cached teacher labels must not
    depend on the device's low-precision kernels, and inference is a small part of a run's cost.
    """
    model.eval()
    outs = []
    with full_fp32():
        for start in range(0, len(images_u8), batch_size):
            x = to_float_images(images_u8[start : start + batch_size])
            if params is not None:
                x = augment.apply_views(x, params[start : start + batch_size])
            outs.append(model(x).float())
    return torch.cat(outs) if outs else torch.zeros(0, device=images_u8.device)


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Batches) -> torch.Tensor:
    """Logits of ``model`` over every row of ``batches``, plain pictures in order: float32 [N, C] on the CPU.

    Reads the in-order pass, so a streamed split (``ShardBatches``) is never held whole; in full
    fp32, as ``predict_images``. Each batch's logits are copied to the host as they come (non-blocking
    on CUDA into pinned memory), so device memory holds one batch's, not the split's.
    """
    model.eval()
    outs = []
    pin = batches.device.type == "cuda"
    with full_fp32():
        for batch in batches.batches():
            logits = model(batch["image"]).float()
            host = torch.empty(logits.shape, dtype=logits.dtype, pin_memory=pin)
            outs.append(host.copy_(logits, non_blocking=pin))
    if pin:
        torch.cuda.synchronize(batches.device)  # the non-blocking copies have landed
    return torch.cat(outs) if outs else torch.zeros(0)
