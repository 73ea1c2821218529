"""Inference for measurement and labelling: logits in full fp32, batch by batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kdflow.training import augment
from kdflow.training.batches import to_float_images
from kdflow.training.device import full_fp32

if TYPE_CHECKING:
    from kdflow.training.trainer import Batches


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
