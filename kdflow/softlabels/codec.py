"""Compact soft labels: a teacher's top-k logits plus a two-number summary of the rest.

Per row the codec keeps, all in float32:

* ``values`` [k]: the k largest logits, sorted largest first (``torch.topk``);
* ``index`` [k] (int32): their class indices;
* ``tail_lse``: the logsumexp at T = 1 of the C - k logits not kept (the "tail");
* ``tail_mean``: the tail's mean logit.

Logits are kept rather than probabilities so that any distillation temperature can be applied
later. When C <= k the whole row is kept (``index = arange(C)``, ``tail_lse = -inf``,
``tail_mean = 0``) and reconstruction is exact. ``compress`` computes everything in float32; what
the cache stores is the compact encoding below (``encode``/``decode``).

Stored encoding (``encode``): 2 bytes per number
------------------------------------------------
Per row, at k = 10 and C = 1000: 20 + 20 + 4 = 44 bytes (54 with an augmented view's int16 [5]
parameters), against 88 in float32/int32:

* ``values`` float16 [k]: column 0 is the row's anchor ``a = values[0]`` (the top-1 logit when
  C > k), columns 1.. hold the gaps ``a - values[i]`` (>= 0 when sorted);
* ``index`` uint8 when C <= 256, else uint16 (int32 past 65536 classes);
* ``tail`` float16 [2]: ``a - tail_lse`` and ``s2 / 2 = tail_lse - log n - tail_mean`` (clamped
  >= 0), the two numbers the tail model below actually uses; ``tail_mean`` is derived from them.

Why gaps from the top-1 rather than the logits themselves: softmax ignores a common shift, so only
differences between logits matter. Stored as is, a logit's float16 error grows with its magnitude
(half a unit in the last place, 2^-11 relative), whatever the teacher's arbitrary offset: a teacher
whose logits sit around 40 would lose 0.016 on every logit, the near-top ones included, where the
probability mass is. As gaps, the error of class i is about ``gap_i * 2^-12`` while its probability
is about ``exp(-gap_i)`` of the top-1's: the classes that carry the mass are the ones stored most
precisely, and the error does not depend on the offset. The anchor's own rounding shifts the whole
row alike and changes no probability. What this costs (tests/unit/test_codec.py, 256 confident
1000-class rows, k = 10, KL(rebuilt from ``compress``'s float32 || rebuilt from the stored form)):
measured max 6e-8 / 4e-7 / 7e-8 nats at T = 1 / 2 / 4, the same with every logit offset by +40; the
test's bound is 1e-5. Storing the logits themselves in float16 measured 3e-6 (8e-5 when offset by
+40). The top-1 class is always exact; C <= k rows are exact up to float16 rounding of the gaps. The
tail's mass at T = 1 moves by at most about 0.2% (``a - tail_lse``, a number of a few units, rounded
to float16), small next to the tail model's own error at T = 2.

An earlier version kept fp16 values next to a full-row logsumexp and rebuilt the tail mass as a
difference of two nearly equal numbers, which for confident teachers was off by a large factor; the
encoding here stores the tail's log-mass directly (relative to the anchor), never as a difference.

Tail model
----------
When C > k the n = C - k missing logits are rebuilt as one equal value ``t_T`` per row, chosen so
that the tail's probability mass under ``softmax(z / T)`` is right. A uniform tail of n values t
has ``sum_i exp(t / T) = n exp(t / T)``; matching the true tail ``sum_i exp(z_i / T)`` needs::

    t_T = T * (LSE_i(z_i / T) - log n).

Only ``LSE`` at T = 1 is stored, so ``LSE(z / T)`` is approximated to second order (a
Gaussian-tail model: for tail logits with mean mu and variance s2, ``log mean exp(z / T) =
mu / T + s2 / (2 T^2)`` exactly when they are Gaussian)::

    LSE(z / T) ~= log n + mu / T + s2 / (2 T^2),   s2 / 2 = tail_lse - log n - mu  (clamped >= 0)

    =>  t_T = mu + (tail_lse - log n - mu) / T.

Properties: at T = 1 the tail mass is exact (up to float32 rounding); as T grows ``t_T`` tends to
the tail's mean, which is the exact large-T limit; in between it is exact for Gaussian-distributed
tail logits and an approximation otherwise (a truncated tail, which is what remains after taking
the top-k, is not exactly Gaussian: the error is largest at intermediate T; for confident
1000-class teachers with k = 10 the tail mass is off by a median 1.4% (at most 13%) at T = 2 and a
median 0.08% (at most 0.9%) at T = 4, see tests/unit/test_codec.py). The codec is meant for T >= 1. For
T < 1 the model extrapolates and overestimates the tail mass (several-fold at T = 0.5), and can
even overshoot the top-1, so ``t_T`` is clamped to the smallest kept logit, which the true value
never exceeds (for T >= 1 the clamp never binds); the top-k ranking is then still intact.

What is lost is the tail's shape: every tail class gets the same probability, so the student sees
the teacher's top-k ranking and (approximately, exactly at T = 1) the total tail mass, but no
ranking among the tail classes. The top-1 class is always kept exactly. This is the same trade-off
as sparse soft-label schemes such as FKD (Shen & Xing, "A Fast Knowledge Distillation Framework
for Visual Recognition", ECCV 2022), which store only the top-k of the teacher's soft labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kdflow.util.errors import KdflowError


def compress(logits: torch.Tensor, k: int) -> dict[str, np.ndarray]:
    """Encode teacher logits as top-k values plus a tail summary.

    logits float [N, C] -> {"values": float32 [N, k'], "index": int32 [N, k'],
    "tail_lse": float32 [N], "tail_mean": float32 [N]}, with k' = min(k, C). ``values`` are sorted
    largest first (``torch.topk``). When C <= k, ``values``/``index`` hold the whole row
    (``index = arange(C)``), ``tail_lse = -inf`` and ``tail_mean = 0``. The classes are the last
    dimension; any leading dimensions are carried through (e.g. [N, V, C] -> tail_lse [N, V]).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    logits = torch.as_tensor(logits).float()
    c = logits.shape[-1]
    lead = logits.shape[:-1]
    if c <= k:
        values = logits
        index = torch.arange(c, device=logits.device).expand(*lead, c)
        tail_lse = torch.full(lead, -math.inf, device=logits.device)
        tail_mean = torch.zeros(lead, device=logits.device)
    else:
        values, index = torch.topk(logits, k, dim=-1)  # sorted, largest first
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, index, True)
        tail = logits.masked_fill(keep, -math.inf)
        tail_lse = torch.logsumexp(tail, dim=-1)
        # Tail mean = (row sum - top-k sum) / n would cancel badly; sum the tail directly.
        tail_mean = logits.masked_fill(keep, 0.0).sum(dim=-1) / (c - k)
    return {
        "values": values.float().cpu().numpy().astype(np.float32, copy=False),
        "index": index.to(torch.int32).cpu().numpy(),
        "tail_lse": tail_lse.float().cpu().numpy().astype(np.float32, copy=False),
        "tail_mean": tail_mean.float().cpu().numpy().astype(np.float32, copy=False),
    }


def dense(
    values: torch.Tensor,
    index: torch.Tensor,
    tail_lse: torch.Tensor,
    tail_mean: torch.Tensor,
    num_classes: int,
    temperature: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Rebuild full logit rows for ``softmax(z / temperature)``.

    ``temperature`` is a number, or one per row (float [B]) when each row is softened differently
    (logit standardization divides each row by its own standard deviation).

    values/index [B, k], tail_lse/tail_mean [B] -> float32 [B, num_classes]. The kept logits are
    scattered exactly; the num_classes - k others all get ``t_T = tail_mean + (tail_lse -
    log(num_classes - k) - tail_mean) / temperature``, clamped to at most ``values.min()`` (see the
    module docstring). The result is meant to be divided by the same ``temperature`` before the
    softmax. When k >= num_classes the values are scattered exactly and there is no tail.
    """
    values = torch.as_tensor(values).float()
    # A number is checked; per-row temperatures (a device tensor, T * std + eps) are positive by
    # construction, and checking them would wait on the device every batch.
    if not isinstance(temperature, torch.Tensor) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    index = torch.as_tensor(index, device=values.device).long()
    k = values.shape[-1]
    lead = values.shape[:-1]
    if k >= num_classes:
        out = torch.zeros(*lead, num_classes, device=values.device)
        return out.scatter_(-1, index, values)
    tail_lse = torch.as_tensor(tail_lse, device=values.device).float()
    tail_mean = torch.as_tensor(tail_mean, device=values.device).float()
    half_s2 = (tail_lse - math.log(num_classes - k) - tail_mean).clamp(min=0.0)
    tail = tail_mean + half_s2 / temperature  # [B]
    # The true t_T never exceeds the largest tail logit, hence never the smallest kept one. For
    # T >= 1 the formula already respects that (t_T <= t_1 = log-mean-exp of the tail); for T < 1
    # the Gaussian extrapolation can overshoot, even past the top-1, so clamp it.
    tail = torch.minimum(tail, values.min(dim=-1).values)
    out = tail.unsqueeze(-1).expand(*lead, num_classes).clone()
    return out.scatter_(-1, index, values)


def standardized_dense(
    values: torch.Tensor,
    index: torch.Tensor,
    tail_lse: torch.Tensor,
    tail_mean: torch.Tensor,
    num_classes: int,
    temperature: float = 1.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Rebuild z-scored logit rows ``(z - mean) / (std + eps)`` for ``softmax(z' / temperature)``
    (logit standardization, Sun et al., CVPR 2024; see ``kdflow.losses.logit_std``).

    values/index [B, k], tail_lse/tail_mean [B] -> float32 [B, num_classes]. Exact when
    k >= num_classes. Otherwise the row's mean is exact (the tail's mean is stored) and its
    (unbiased) variance uses the Gaussian-tail model's tail variance ``s2 = 2 * (tail_lse - log n -
    tail_mean)``; softmax(z' / T) = softmax(z / (T * (std + eps))), so the tail is rebuilt for that
    per-row temperature, where the tail model is at its most accurate (large effective T).
    """
    values = torch.as_tensor(values).float()
    k = values.shape[-1]
    if k >= num_classes:
        from kdflow.losses.logit_std import standardize

        return standardize(dense(values, index, tail_lse, tail_mean, num_classes), eps)
    n = num_classes - k
    tail_lse = torch.as_tensor(tail_lse, device=values.device).float()
    tail_mean = torch.as_tensor(tail_mean, device=values.device).float()
    s2 = 2.0 * (tail_lse - math.log(n) - tail_mean).clamp(min=0.0)  # [B]
    mean = (values.sum(-1) + n * tail_mean) / num_classes  # [B]
    sum_sq = (values * values).sum(-1) + n * (tail_mean * tail_mean + s2)
    std = ((sum_sq - num_classes * mean * mean).clamp(min=0.0) / (num_classes - 1)).sqrt() + eps  # [B]
    z = dense(values, index, tail_lse, tail_mean, num_classes, temperature * std)
    return (z - mean.unsqueeze(-1)) / std.unsqueeze(-1)


def index_dtype(num_classes: int) -> np.dtype:
    """The narrowest unsigned type holding every class index."""
    if num_classes <= 256:
        return np.dtype(np.uint8)
    return np.dtype(np.uint16) if num_classes <= 65536 else np.dtype(np.int32)


def encode(codec: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """``compress``'s float32 arrays -> the stored form (module docstring): {"values": float16
    [..., k] (anchor, then gaps from it), "index": uint8/uint16 [..., k], "tail": float16 [..., 2]
    (anchor - tail_lse, s2 / 2)}."""
    values = np.asarray(codec["values"], dtype=np.float32)
    anchor = values[..., :1]
    stored = np.concatenate([anchor, anchor - values[..., 1:]], axis=-1)
    tail_lse = np.asarray(codec["tail_lse"], dtype=np.float32)
    k = values.shape[-1]
    with np.errstate(invalid="ignore", over="ignore"):
        n = max(num_classes - k, 1)
        half_s2 = np.where(np.isfinite(tail_lse),
                           np.maximum(tail_lse - np.float32(math.log(n)) - codec["tail_mean"], 0), 0)
        tail = np.stack([anchor[..., 0] - tail_lse, half_s2], axis=-1)
        out = {"values": stored.astype(np.float16), "tail": tail.astype(np.float16),
               "index": np.asarray(codec["index"]).astype(index_dtype(num_classes))}
    if not np.isfinite(out["values"]).all() or np.isnan(out["tail"]).any() or np.isinf(out["tail"][..., 1]).any():
        raise KdflowError("the teacher's logits do not fit float16 (|logit| or a gap between logits > 65504, "
                          "or not a number)", "check the teacher: its outputs should be finite logits")
    return out


def decode(stored: dict[str, np.ndarray], num_classes: int) -> dict[str, np.ndarray]:
    """The stored form -> ``compress``'s fields in the dtypes the losses use: values float32 [..., k],
    index int64 [..., k], tail_lse/tail_mean float32 [...]."""
    packed = stored["values"].astype(np.float32)
    anchor = packed[..., :1]
    values = np.concatenate([anchor, anchor - packed[..., 1:]], axis=-1)
    tail = stored["tail"].astype(np.float32)
    k = values.shape[-1]
    tail_lse = anchor[..., 0] - tail[..., 0]  # -inf when the whole row is kept (gap +inf)
    if num_classes <= k:
        tail_mean = np.zeros_like(tail_lse)
    else:
        tail_mean = tail_lse - np.float32(math.log(num_classes - k)) - tail[..., 1]
    return {"values": values, "index": stored["index"].astype(np.int64), "tail_lse": tail_lse,
            "tail_mean": tail_mean.astype(np.float32)}
