"""DIST: distillation by correlation of the class probabilities.

Huang, You, Wang, Qian, Xu. "Knowledge Distillation from A Stronger Teacher." NeurIPS 2022,
arXiv:2205.10536. Instead of matching the teacher's probabilities exactly (KL), DIST asks the
student to preserve their relations: the Pearson correlation of each sample's class probabilities
(inter-class relation) and of each class's probabilities across the batch (intra-class relation).
Follows the official implementation (``inter_class_relation`` / ``intra_class_relation``, scaled
by tau^2).
"""

from __future__ import annotations

import torch


def pearson(a: torch.Tensor, b: torch.Tensor, dim: int, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of ``a`` and ``b`` along ``dim`` (that dim is reduced).

    As in the official code: the cosine similarity of the centred tensors,
    ``sum(a' b') / (|a'| |b'| + eps)``; 0 where either is constant along ``dim``.
    """
    a = a - a.mean(dim=dim, keepdim=True)
    b = b - b.mean(dim=dim, keepdim=True)
    return (a * b).sum(dim=dim) / (a.norm(dim=dim) * b.norm(dim=dim) + eps)


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inter, intra)``: the two DIST terms at temperature T, scalars.

    student_logits, teacher_logits: [B, C]. With p = softmax(z / T) over classes ([B, C]):
    inter = T^2 * (1 - mean over the B rows of pearson(p_s[b, :], p_t[b, :])),
    intra = T^2 * (1 - mean over the C columns of pearson(p_s[:, c], p_t[:, c])).
    Computed in float32 whatever the input dtype.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    p_s = torch.softmax(student_logits.float() / temperature, dim=-1)
    p_t = torch.softmax(teacher_logits.float() / temperature, dim=-1)
    inter = temperature**2 * (1.0 - pearson(p_s, p_t, dim=1).mean())
    intra = temperature**2 * (1.0 - pearson(p_s, p_t, dim=0).mean())
    return inter, intra


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, gamma: float,
              temperature: float) -> torch.Tensor:
    """``beta * inter + gamma * intra`` (see ``dist_terms``). The official code's defaults are
    beta = gamma = T = 1; its ``dist_t4`` setting (beta = gamma = 2, T = 4) is kdflow's default, as for
    the CIFAR-100 experiments. student_logits, teacher_logits: [B, C]; returns a scalar."""
    inter, intra = dist_terms(student_logits, teacher_logits, temperature)
    return beta * inter + gamma * intra
