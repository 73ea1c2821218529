"""Losses and soft-label reconstruction against values computed by hand."""

import math

import pytest
import torch

from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.losses import kd_loss
from kdflow.softlabels.cache import SoftRows

LN3 = math.log(3.0)
# p_t = [3/4, 1/4], p_s = [1/2, 1/2]: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
KL_HAND = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812...


def test_kd_loss_matches_hand_computed_kl_at_t1():
    loss = kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), temperature=1.0)
    assert loss.item() == pytest.approx(0.1308120, abs=1e-6)
    assert loss.item() == pytest.approx(KL_HAND, rel=1e-6)


def test_kd_loss_softens_by_t_and_scales_by_t_squared():
    # At T = 2, teacher logits [2 ln 3, 0] soften to the same [3/4, 1/4]; the loss is 4 x KL.
    loss = kd_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([[2 * LN3, 0.0]]), temperature=2.0)
    assert loss.item() == pytest.approx(4 * KL_HAND, rel=1e-6)


def test_kd_loss_is_zero_for_identical_logits_and_averages_over_batch():
    same = torch.tensor([[1.0, -2.0, 0.5]])
    assert kd_loss(same, same.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-7)
    batch_s = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    batch_t = torch.tensor([[LN3, 0.0], [1.0, -2.0]])
    assert kd_loss(batch_s, batch_t, 1.0).item() == pytest.approx(KL_HAND / 2, rel=1e-6)


def test_kd_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4), 1.0)


class _Fixed(torch.nn.Module):
    """A 'student' whose logits are a fixed tensor (plus a parameter so it is trainable)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.logits + self.w


def test_kd_distiller_combines_terms_with_alpha():
    student = _Fixed(torch.tensor([[0.0, 0.0]]))
    options = get_distiller_class("kd").Options(temperature=1.0, alpha=0.25)
    distiller = build_distiller("kd", student, None, options)
    out = distiller({"image": torch.zeros(1, 3, 2, 2), "label": torch.tensor([0]),
                     "teacher_soft": SoftRows(torch.tensor([[LN3, 0.0]]), torch.tensor([[0, 1]]),
                                              torch.tensor([-math.inf]), torch.tensor([0.0]), 2)})
    ce = math.log(2.0)  # uniform student, two classes
    assert out["kd"].item() == pytest.approx(KL_HAND, rel=1e-6)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.25 * KL_HAND + 0.75 * ce, rel=1e-6)
    assert set(out) >= {"loss", "output", "kd", "ce"}
