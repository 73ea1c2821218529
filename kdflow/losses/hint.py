"""FitNets hints.

Romero, Ballas, Kahou, Chassang, Gatta, Bengio. "FitNets: Hints for Thin Deep Nets." ICLR 2015,
arXiv:1412.6550. The student's intermediate feature (through a learned connector, the "regressor",
that maps it to the teacher's shape) is regressed onto the teacher's hint layer with an L2 loss.
As mdistiller's FitNet: ``F.mse_loss`` with mean reduction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hint_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements of the two features.

    student_feature, teacher_feature: the same shape, typically [B, C, H, W] (the student's after
    its connector). Returns a float32 scalar, computed in float32 whatever the input dtype.
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(f"student feature {tuple(student_feature.shape)} and teacher feature "
                         f"{tuple(teacher_feature.shape)} differ in shape: a connector must map the "
                         f"student's feature to the teacher's shape")
    return F.mse_loss(student_feature.float(), teacher_feature.float())
