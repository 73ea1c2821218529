"""The optimizer every training run uses: SGD (Nesterov) or AdamW, without weight decay on biases and
normalisation parameters, with the fastest step implementation the device has."""

from __future__ import annotations

import torch

from kdflow.config import TrainConfig


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
