"""Hinton knowledge distillation.

Hinton, Vinyals, Dean. "Distilling the Knowledge in a Neural Network." NIPS 2014 Deep Learning
Workshop, arXiv:1503.02531. The student matches the teacher's temperature-softened distribution;
the KL term is scaled by T^2 so its gradients keep their magnitude as T changes (section 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t / T) || softmax(s / T))``, averaged over the batch.

    student_logits, teacher_logits: [B, C]. Returns a scalar. Computed in float32 whatever the
    autocast dtype: a softmax at high temperature is where bf16 loses the most.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # [B]
    return kl.mean() * temperature**2
