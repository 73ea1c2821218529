"""The training loop, shared by every distiller and by teacher bootstrap.

It knows nothing of MLflow or KFP: per-epoch metrics go to an ``on_epoch`` callback, and a
checkpoint (model, optimizer, scheduler, RNG, epoch) is written after every epoch so a preempted
run resumes where it stopped instead of starting over.
"""

from __future__ import annotations

import io
import logging
import math
from contextlib import nullcontext
from typing import Callable

import torch

from kdflow.config import TrainConfig
from kdflow.distillers.base import Distiller
from kdflow.errors import KdflowError
from kdflow.storage import join, storage_for
from kdflow.training import augment
from kdflow.training.batches import ArrayBatches, to_float_images
from kdflow.training.device import full_fp32
from kdflow.training.schedule import warmup_cosine

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], None]
CHECKPOINT = "last.pt"
CHECK_EVERY = 50  # steps between two reads of the divergence flag (the only host syncs within an epoch)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0) or AdamW, with no weight decay on biases and norm parameters.

    Parameters with ndim <= 1 (every bias, BatchNorm/LayerNorm weight and bias) get weight_decay 0:
    regularise only the conv/linear weights, to avoid overfitting, while biases and the norm layers'
    scale and shift are left free ("Bag of Tricks for Image Classification with Convolutional Neural
    Networks", He et al., CVPR 2019, sec. 3.1, "No bias decay"). Conv/linear weights (ndim > 1) keep
    ``cfg.weight_decay``. Empty groups are left out.
    """
    params = list(params)  # may be a generator; it is walked twice below
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _autocast(device: torch.device):
    # bf16 needs no loss scaling; on CPU autocast would only slow these small convnets down.
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _save(uri: str, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    storage_for(uri).write_bytes(uri, buf.getvalue())


def _raise_if_diverged(first_bad: torch.Tensor, bad_loss: torch.Tensor, epoch: int) -> None:
    """One host read of the divergence flag; the error names the first step whose loss was not finite.
    (Steps after it ran on NaN weights, but nothing is checkpointed before this check.)"""
    step = int(first_bad)
    if step >= 0:
        raise KdflowError(f"training loss became {float(bad_loss)} at epoch {epoch}, step {step}",
                          "lower train.lr, or check the data and teacher for NaN/inf values")


def fit(
    distiller: Distiller,
    train: ArrayBatches,
    cfg: TrainConfig,
    *,
    validate: Callable[[], dict[str, float]] | None = None,
    on_epoch: EpochCallback | None = None,
    checkpoint_dir: str | None = None,
) -> dict[str, float]:
    """Train ``distiller``'s trainable parameters for ``cfg.epochs``; returns the last epoch's metrics."""
    device = train.device
    seed_everything(cfg.seed)
    distiller.to(device)
    # Before the optimizer and any checkpoint: a method may build modules sized by the features.
    distiller.prepare(train.example())
    optimizer = make_optimizer(list(distiller.trainable_parameters()), cfg)
    total = cfg.epochs * train.steps_per_epoch()
    warmup = cfg.warmup_epochs * train.steps_per_epoch()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup))

    start_epoch, metrics = 0, {}
    ckpt_uri = join(checkpoint_dir, CHECKPOINT) if checkpoint_dir else None
    if ckpt_uri and (store := storage_for(ckpt_uri)).exists(ckpt_uri):
        state = torch.load(io.BytesIO(store.read_bytes(ckpt_uri)), map_location=device, weights_only=True)
        distiller.load_checkpoint_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, metrics = state["epoch"] + 1, state["metrics"]
        log.info("resuming from %s at epoch %d", ckpt_uri, start_epoch)

    for epoch in range(start_epoch, cfg.epochs):
        distiller.train()
        distiller.start_epoch(epoch)
        # Everything the loop sums stays on the device and is read every CHECK_EVERY steps and at the
        # end of the epoch: a .item() or a tensor in an `if` per step makes the host wait for the GPU
        # queue to drain, which leaves the GPU idle while Python prepares the next step.
        sums: dict[str, torch.Tensor] = {}  # name -> sum over samples of the term, float64 [] on device
        correct = torch.zeros((), dtype=torch.long, device=device)
        first_bad = torch.full((), -1, dtype=torch.long, device=device)  # first step with a non-finite loss
        bad_loss = torch.zeros((), device=device)
        seen = 0
        for step, batch in enumerate(train.batches(epoch=epoch, seed=cfg.seed)):
            with _autocast(device):
                out = distiller(batch)
            loss = out["loss"]
            newly_bad = ~torch.isfinite(loss.detach()) & (first_bad < 0)
            first_bad = torch.where(newly_bad, step, first_bad)
            bad_loss = torch.where(newly_bad, loss.detach().float(), bad_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = batch["label"].shape[0]
            seen += n
            correct += (out["output"].argmax(-1) == batch["label"]).sum()
            for name, value in out.items():
                if name != "output":
                    term = value.detach().double() * n  # float64: long epochs sum many terms
                    sums[name] = sums[name] + term if name in sums else term
            if (step + 1) % CHECK_EVERY == 0:
                _raise_if_diverged(first_bad, bad_loss, epoch)
        _raise_if_diverged(first_bad, bad_loss, epoch)
        names = list(sums)
        totals = torch.stack([*(sums[k] for k in names), correct.double()]).tolist()  # the epoch's one read
        metrics = {f"train_{k}": v / max(seen, 1) for k, v in zip(names, totals)}
        metrics["train_accuracy"] = totals[-1] / max(seen, 1)
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if validate is not None:
            distiller.eval()
            metrics.update(validate())
        log.info("epoch %d/%d %s", epoch + 1, cfg.epochs,
                 " ".join(f"{k}={v:.4f}" for k, v in metrics.items() if math.isfinite(v)))
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if ckpt_uri:
            _save(ckpt_uri, {"epoch": epoch, "metrics": metrics, "model": distiller.checkpoint_state(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "rng": torch.get_rng_state()})
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


def predict(model: torch.nn.Module, batches: ArrayBatches) -> torch.Tensor:
    """Logits of ``model`` over every row of ``batches``, plain pictures in order: float32 [N, C] on the CPU."""
    return predict_images(model, batches.images, batches.batch_size).cpu()
