"""Data-parallel training under torchrun: who this process is, the process group, the DDP wrapper.

torchrun starts one worker per GPU (``train.processes``) and tells each who it is through the
environment: ``RANK`` (0..WORLD_SIZE-1), ``WORLD_SIZE``, ``LOCAL_RANK`` (its GPU on this node) and
``MASTER_ADDR``/``MASTER_PORT`` (where rank 0 listens). A process started any other way is the one
and only rank. Everything here is read at run time, never at import.

Each rank trains on its slice of every global batch (``batches(rank=, world=)``) and DDP averages
the gradients, so a step equals one process's step on the whole batch, up to float rounding:

* the loss is a mean over the rank's b = B / world samples, and the all-reduce averages the ranks'
  gradients, which is the gradient of the mean over all B samples;
* BatchNorm is the exception. In training mode it normalises with the statistics of the batch it
  sees, which under DDP is the rank's slice, not the global batch: different numbers, so a network
  with BatchNorm does not follow the one-process trajectory (it is still a sound way to train; it is
  what "local BN" means in the large-batch literature). ``train.sync_batchnorm`` converts it to
  SyncBatchNorm, which all-reduces the statistics over the ranks (on CUDA only: SyncBatchNorm has
  no CPU/gloo kernel), and then the statistics are again those of the global batch. So exact
  equality with one process needs a network without BatchNorm, or SyncBatchNorm.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from kdflow.util.errors import ConfigError

log = logging.getLogger(__name__)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ConfigError(f"environment variable {name} is '{raw}', not an integer",
                          "start distributed training with torchrun, which sets it") from exc


def is_torchrun_worker() -> bool:
    """True in a process that torchrun started (it sets RANK, WORLD_SIZE and LOCAL_RANK)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; ``DistContext()`` is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, checkpoints and writes results."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: gradients and metrics go through the process group."""
        return self.world > 1

    @classmethod
    def from_env(cls, device: torch.device) -> "DistContext":
        """Rank and world from torchrun's environment; on CUDA each rank takes GPU ``LOCAL_RANK``
        (whatever index ``device`` names: torchrun hands out the GPUs), on the CPU ``device`` as is."""
        rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
        if not 0 <= rank < world:
            raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}", "start the workers with torchrun")
        if device.type == "cuda" and world > 1:
            if local >= torch.cuda.device_count():
                raise ConfigError(f"worker {rank} wants GPU {local} but {torch.cuda.device_count()} are visible",
                                  "ask for as many GPUs as train.processes, or lower train.processes")
            device = torch.device("cuda", local)
        return cls(rank, world, local, device)


def init(device: torch.device, timeout_s: float = 1800.0) -> DistContext:
    """Read the environment and, with more than one process, join the process group (NCCL on CUDA,
    gloo on the CPU). Safe to call in a plain single-process run: it then does nothing."""
    ctx = DistContext.from_env(device)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)  # NCCL's collectives run on the current device
    if ctx.active and not dist.is_initialized():
        backend = "nccl" if ctx.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=ctx.rank, world_size=ctx.world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        log.info("rank %d of %d joined the %s process group on %s", ctx.rank, ctx.world, backend, ctx.device)
    return ctx


def destroy(ctx: DistContext) -> None:
    """Leave the process group (when ``init`` joined one)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    """Sum of ``x`` over the ranks, in place (``x`` itself in a single-process run). Asynchronous on
    the device: reading the result is what waits."""
    if ctx is not None and ctx.active:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_min(x: torch.Tensor, ctx: DistContext | None) -> torch.Tensor:
    if ctx is not None and ctx.active:
        dist.all_reduce(x, op=dist.ReduceOp.MIN)
    return x


def broadcast_object(obj, ctx: DistContext | None):
    """Rank 0's ``obj`` on every rank (a small picklable value)."""
    if ctx is None or not ctx.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def use_sync_batchnorm(module: nn.Module, skip: tuple[str, ...] = ("teacher",)) -> bool:
    """Turn the BatchNorm layers of ``module``'s children (but the frozen teacher) into SyncBatchNorm,
    in place; returns whether there was any. Children are converted one by one so that objects held
    elsewhere (the student a step saves afterwards) stay the same objects."""
    found = False
    for name, child in list(module.named_children()):
        if name in skip:
            continue
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in child.modules()):
            found = True
            converted = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            if converted is not child:  # the child itself was a BatchNorm layer
                setattr(module, name, converted)
    return found


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """SyncBatchNorm back to BatchNorm2d with the same state, in place (returns ``module``, or its
    replacement when it is itself one): a trained student is saved, exported and served on one device."""
    if isinstance(module, nn.SyncBatchNorm):
        plain = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        # The same Parameter and buffer objects (as convert_sync_batchnorm does the other way round):
        # an optimizer that holds them keeps working.
        if module.affine:
            plain.weight, plain.bias = module.weight, module.bias
        if module.track_running_stats:
            plain.running_mean, plain.running_var = module.running_mean, module.running_var
            plain.num_batches_tracked = module.num_batches_tracked
        plain.train(module.training)
        return plain
    for name, child in list(module.named_children()):
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def wrap(distiller: nn.Module, ctx: DistContext, find_unused_parameters: bool) -> nn.Module:
    """``distiller`` in DistributedDataParallel (``distiller`` itself in a single-process run).

    The distiller, not the student, is what is wrapped: its forward returns the loss, and a method's
    own trainable modules (hint connectors) need their gradients averaged too. The frozen teacher is
    left out of DDP altogether: its parameters need no gradient and its buffers must not be broadcast
    every step (an exported teacher has nothing DDP could broadcast). ``find_unused_parameters``
    makes DDP walk the autograd graph every step to find trainable parameters a forward did not use
    (without it such a parameter makes the next step fail); the trainer turns it on only when a probe
    step shows that some are unused.
    """
    if not ctx.active:
        return distiller
    ignored = [n for n, _ in distiller.named_parameters() if n.startswith("teacher.")]
    ignored += [n for n, _ in distiller.named_buffers() if n.startswith("teacher.")]
    if ignored:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(distiller, ignored)
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(distiller, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)
