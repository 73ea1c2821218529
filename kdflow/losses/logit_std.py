"""Logit standardisation.

Sun, Ren, Li, Wang, Cao. "Logit Standardization in Knowledge Distillation." CVPR 2024,
arXiv:2403.01427. A shared temperature forces the student to match the teacher's logit range as
well as their relations; z-scoring each row first removes the range, so the student only has to
match the shape. The standardisation is applied before the temperature: the student and teacher
are compared on ``softmax(standardize(z) / T)``, i.e. ``softmax((z - mean) / std / T)``, for
example ``kd_loss(standardize(s), standardize(t), T)``.
"""

from __future__ import annotations

import torch


def standardize(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-row z-score over the last dim: ``(z - mean) / (std + eps)``.

    logits: [..., C] with C >= 2. Returns float32 of the same shape. The std is torch's default
    unbiased one (correction = 1), as in the authors' code.
    """
    if logits.dim() == 0 or logits.shape[-1] < 2:
        raise ValueError(f"standardize needs at least two logits per row, got shape {tuple(logits.shape)}")
    z = logits.float()
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)
    return (z - mean) / (std + eps)
