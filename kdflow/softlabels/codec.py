"""Compact soft labels: top-k logits, their class indices, and the logsumexp of the full row.

Per sample and view the cache keeps ``values`` (float16 [k]), ``index`` (int32 [k]) and ``lse``
(float32, logsumexp of all C logits). Logits are kept rather than probabilities so that any
temperature can be applied later. When C <= k the full row is kept and reconstruction is exact.

When C > k the C - k missing logits are rebuilt as equal values that carry exactly the tail's
probability mass at T = 1: ``tail = log(exp(lse) - sum(exp(top-k))) - log(C - k)``. The student then
sees the teacher's top-k ranking and the right total tail mass; only the tail's shape is lost (the
same approximation as sparse soft-label schemes such as FKD, Shen & Xing, ECCV 2022).
"""

from __future__ import annotations

import numpy as np
import torch


def compress(logits: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """logits: float [N, V, C] -> {"values": f16 [N, V, k'], "index": i32 [N, V, k'], "lse": f32 [N, V]}."""
    logits = logits.float()
    n, v, c = logits.shape
    lse = torch.logsumexp(logits, dim=-1)
    if c <= k:
        values, index = logits, torch.arange(c).expand(n, v, c)
    else:
        values, index = torch.topk(logits, k, dim=-1)  # sorted, largest first
    return {
        "values": values.to(torch.float16).cpu().numpy(),
        "index": index.to(torch.int32).cpu().numpy(),
        "lse": lse.cpu().numpy().astype(np.float32),
    }


def dense(values: torch.Tensor, index: torch.Tensor, lse: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rebuild full logit rows: values/index [B, k], lse [B] -> float32 [B, num_classes]."""
    values = values.float()
    k = values.shape[-1]
    if k >= num_classes:
        return torch.empty(values.shape[0], num_classes, device=values.device).scatter_(-1, index.long(), values)
    # Tail mass at T = 1; clamp so fp16 rounding of the top-k cannot make it <= 0.
    top_mass = torch.logsumexp(values, dim=-1)
    tail_mass = lse.float() + torch.log1p(-torch.exp(top_mass - lse.float()).clamp(max=1 - 1e-6))
    tail = (tail_mass - np.log(num_classes - k)).unsqueeze(-1)  # [B, 1]
    out = tail.expand(values.shape[0], num_classes).clone()
    return out.scatter_(-1, index.long(), values)
