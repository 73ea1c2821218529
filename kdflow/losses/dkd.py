"""Decoupled Knowledge Distillation (DKD).

Zhao, Cui, Song, Qiu, Liang. "Decoupled Knowledge Distillation." CVPR 2022, arXiv:2203.08679.
The KD loss of a sample splits exactly (eq. 3 of the paper) into

    KL(p^T || p^S) = TCKD + (1 - p_t^T) * NCKD

TCKD (target class KD) compares the binary distributions [p_t, 1 - p_t] of the target class t;
NCKD (non-target class KD) compares the distributions over the non-target classes, renormalised
among themselves. DKD drops the (1 - p_t^T) factor that suppresses NCKD for confident teachers and
weighs the two terms freely: ``alpha * TCKD + beta * NCKD``. This follows the official mdistiller
implementation (batch mean, scaled by T^2), except that the target class is excluded from NCKD
exactly (masked with -inf in log space) instead of by subtracting 1000 from its logit.
"""

from __future__ import annotations

import torch


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    if student_logits.dim() != 2 or student_logits.shape[1] < 2:
        raise ValueError(f"DKD needs logits [B, C] with C >= 2, got {tuple(student_logits.shape)}")
    if target.shape != student_logits.shape[:1]:
        raise ValueError(f"target {tuple(target.shape)} must be [B] = [{student_logits.shape[0]}] "
                         f"for logits {tuple(student_logits.shape)}")


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_i p_i (log p_i - log q_i)`` over the last dim, with 0 * log 0 = 0 where p_i = 0."""
    p = log_p.exp()
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=-1)


def _split(logits: torch.Tensor, target: torch.Tensor,
           target_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log of the binary distribution [p_t, 1 - p_t] ([B, 2]) and the log-probabilities among the
    non-target classes ([B, C], -inf at the target), both computed stably in log space."""
    lse_all = torch.logsumexp(logits, dim=-1, keepdim=True)  # [B, 1]
    others = logits.masked_fill(target_mask, float("-inf"))  # [B, C]
    lse_others = torch.logsumexp(others, dim=-1, keepdim=True)  # [B, 1]
    log_p_target = logits.gather(1, target.unsqueeze(1)) - lse_all  # [B, 1]
    log_binary = torch.cat([log_p_target, lse_others - lse_all], dim=-1)  # [log p_t, log(1 - p_t)]
    return log_binary, others - lse_others


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tckd, nckd)``: the two DKD terms at temperature T, each a batch mean scaled by T^2.

    student_logits, teacher_logits: [B, C] (C >= 2); target: int64 [B]. Returns two scalars.
    tckd = T^2 * mean_b KL([p_t^T, 1 - p_t^T] || [p_t^S, 1 - p_t^S]);
    nckd = T^2 * mean_b KL(q^T || q^S), q = p over the non-target classes renormalised to sum 1,
    with p = softmax(z / T). Computed in float32 whatever the input dtype.
    """
    _check(student_logits, teacher_logits, target)
    z_s = student_logits.float() / temperature
    z_t = teacher_logits.float() / temperature
    target = target.long()
    mask = torch.zeros_like(z_s, dtype=torch.bool).scatter_(1, target.unsqueeze(1), True)  # [B, C]
    bin_s, other_s = _split(z_s, target, mask)
    bin_t, other_t = _split(z_t, target, mask)
    tckd = _kl(bin_t, bin_s).mean() * temperature**2
    nckd = _kl(other_t, other_s).mean() * temperature**2
    return tckd, nckd


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float, beta: float, temperature: float) -> torch.Tensor:
    """``alpha * tckd + beta * nckd`` (see ``dkd_terms``); the paper uses alpha = 1, beta = 8 on
    CIFAR-100 and T = 4. Shapes as in ``dkd_terms``; returns a float32 scalar."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: int, warmup_epochs: int) -> float:
    """Weight of the DKD term at 0-based ``epoch``: linear warm-up ``min((epoch + 1) / warmup_epochs, 1)``.

    The paper (and mdistiller, with 1-based epochs: ``min(epoch / warmup, 1)``) ramps the
    distillation loss in over the first epochs; 1.0 throughout when ``warmup_epochs`` is 0.
    """
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs is {warmup_epochs}; use 0 (no warm-up) or more")
    if warmup_epochs == 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)
