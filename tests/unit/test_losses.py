"""Losses and soft-label reconstruction against values computed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.losses import (dist_loss, dist_terms, dkd_loss, dkd_terms, dkd_warmup, hint_loss, kd_loss, pearson,
                           standardize)
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


# --- DKD (Zhao et al., CVPR 2022, arXiv:2203.08679) ------------------------------------------------

LN = math.log
# Row 0, target 0. Teacher logits ln[3, 2, 1]: p_T = [1/2, 1/3, 1/6]; binary [1/2, 1/2]; non-target
# (classes 1, 2) renormalised [2/3, 1/3]. Student logits [0, 0, 0]: p_S = [1/3, 1/3, 1/3]; binary
# [1/3, 2/3]; non-target [1/2, 1/2].
# Row 1, target 2. Teacher logits ln[1, 3, 4]: p_T = [1/8, 3/8, 1/2]; binary [1/2, 1/2]; non-target
# (classes 0, 1) [1/4, 3/4]. Student logits ln[1, 1, 6]: p_S = [1/8, 1/8, 3/4]; binary [3/4, 1/4];
# non-target [1/2, 1/2].
DKD_TEACHER = [[LN(3), LN(2), LN(1)], [LN(1), LN(3), LN(4)]]
DKD_STUDENT = [[0.0, 0.0, 0.0], [LN(1), LN(1), LN(6)]]
DKD_TARGET = [0, 2]
TCKD_0 = 0.5 * LN(0.5 / (1 / 3)) + 0.5 * LN(0.5 / (2 / 3))
TCKD_1 = 0.5 * LN(0.5 / 0.75) + 0.5 * LN(0.5 / 0.25)
NCKD_0 = (2 / 3) * LN((2 / 3) / 0.5) + (1 / 3) * LN((1 / 3) / 0.5)
NCKD_1 = 0.25 * LN(0.25 / 0.5) + 0.75 * LN(0.75 / 0.5)
TCKD_HAND = (TCKD_0 + TCKD_1) / 2
NCKD_HAND = (NCKD_0 + NCKD_1) / 2


def _softmax_by_hand(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_dkd_hand_rows_have_the_stated_probabilities():
    # The fractions the hand computation above relies on, checked with math.exp only.
    assert _softmax_by_hand(DKD_TEACHER[0]) == pytest.approx([1 / 2, 1 / 3, 1 / 6])
    assert _softmax_by_hand(DKD_TEACHER[1]) == pytest.approx([1 / 8, 3 / 8, 1 / 2])
    assert _softmax_by_hand(DKD_STUDENT[1]) == pytest.approx([1 / 8, 1 / 8, 3 / 4])


def test_dkd_terms_match_hand_computed_values_at_t1_and_t2():
    s, t, y = torch.tensor(DKD_STUDENT), torch.tensor(DKD_TEACHER), torch.tensor(DKD_TARGET)
    tckd, nckd = dkd_terms(s, t, y, temperature=1.0)
    assert tckd.item() == pytest.approx(TCKD_HAND, rel=1e-5)
    assert nckd.item() == pytest.approx(NCKD_HAND, rel=1e-5)
    # Logits doubled at T = 2 soften to the same distributions; each term is scaled by T^2 = 4.
    tckd2, nckd2 = dkd_terms(2 * s, 2 * t, y, temperature=2.0)
    assert tckd2.item() == pytest.approx(4 * TCKD_HAND, rel=1e-5)
    assert nckd2.item() == pytest.approx(4 * NCKD_HAND, rel=1e-5)
    loss = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=1.0)
    assert loss.item() == pytest.approx(TCKD_HAND + 8 * NCKD_HAND, rel=1e-5)


def test_dkd_reformulates_kd_exactly_per_sample():
    # Paper eq. (3): KL(p_T || p_S) = TCKD + (1 - p_t^T) * NCKD, at T = 1, for any logits.
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 7, generator=g) * 3, torch.randn(16, 7, generator=g) * 3
    y = torch.randint(0, 7, (16,), generator=g)
    for b in range(16):
        tckd, nckd = dkd_terms(s[b:b + 1], t[b:b + 1], y[b:b + 1], 1.0)
        p_t = torch.softmax(t[b], -1)[y[b]].item()
        kl = kd_loss(s[b:b + 1], t[b:b + 1], 1.0).item()
        assert kl == pytest.approx(tckd.item() + (1 - p_t) * nckd.item(), rel=1e-4, abs=1e-6)
    # And on the hand rows: row 0 has p_t^T = 1/2, KL = 1/2 ln(3/2) + 1/6 ln(1/2).
    assert TCKD_0 + 0.5 * NCKD_0 == pytest.approx(0.5 * LN(1.5) + (1 / 6) * LN(0.5), rel=1e-12)


def _mdistiller_dkd(s, t, y, alpha, beta, temp):
    """mdistiller's dkd_loss, transcribed (target class removed by subtracting 1000 from its logit)."""
    gt = F.one_hot(y, s.shape[1]).float()
    p_s, p_t = F.softmax(s / temp, dim=1), F.softmax(t / temp, dim=1)
    bin_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    bin_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = F.kl_div(torch.log(bin_s), bin_t, reduction="sum") * temp**2 / y.shape[0]
    nckd = F.kl_div(F.log_softmax(s / temp - 1000.0 * gt, dim=1), F.softmax(t / temp - 1000.0 * gt, dim=1),
                    reduction="sum") * temp**2 / y.shape[0]
    return alpha * tckd + beta * nckd


def test_dkd_agrees_with_mdistiller_on_moderate_logits():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(8, 10, generator=g) * 2, torch.randn(8, 10, generator=g) * 2
    y = torch.randint(0, 10, (8,), generator=g)
    ours = dkd_loss(s, t, y, alpha=1.0, beta=8.0, temperature=4.0)
    assert ours.item() == pytest.approx(_mdistiller_dkd(s, t, y, 1.0, 8.0, 4.0).item(), rel=1e-4)


def test_dkd_is_zero_for_identical_logits_and_rejects_bad_shapes():
    z = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    tckd, nckd = dkd_terms(z, z.clone(), torch.tensor([1, 0]), 4.0)
    assert tckd.item() == pytest.approx(0.0, abs=1e-6) and nckd.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        dkd_terms(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([0, 1]), 1.0)
    with pytest.raises(ValueError, match="target"):
        dkd_terms(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0, 1, 2]), 1.0)


def test_dkd_warmup_is_linear_from_the_first_epoch_and_capped():
    assert [dkd_warmup(e, 4) for e in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert dkd_warmup(0, 0) == 1.0
    assert dkd_warmup(0, 20) == pytest.approx(1 / 20)  # mdistiller: min(epoch / warmup, 1), epoch 1-based


# --- DIST (Huang et al., NeurIPS 2022, arXiv:2205.10536) -------------------------------------------

# Teacher logits ln[3, 2, 1] and ln[1, 1, 4]: p_T = [1/2, 1/3, 1/6] and [1/6, 1/6, 2/3].
# Student logits ln[3, 1, 2] and ln[1, 2, 3]: p_S = [1/2, 1/6, 1/3] and [1/6, 1/3, 1/2].
DIST_TEACHER = [[LN(3), LN(2), LN(1)], [LN(1), LN(1), LN(4)]]
DIST_STUDENT = [[LN(3), LN(1), LN(2)], [LN(1), LN(2), LN(3)]]
# Inter (rows, centred at 1/3): row 0: t' = [1/6, 0, -1/6], s' = [1/6, -1/6, 0]:
#   (1/36) / (sqrt(2)/6 * sqrt(2)/6) = 1/2.
# row 1: t' = [-1/6, -1/6, 1/3], s' = [-1/6, 0, 1/6]: (1/36 + 1/18) / (sqrt(6)/6 * sqrt(2)/6) = sqrt(3)/2.
INTER_HAND = 1 - (0.5 + math.sqrt(3) / 2) / 2
# Intra (columns over B = 2): a two-sample column centred is [d/2, -d/2], so the correlation is the
# sign of d_T * d_S, d = row 0 - row 1: d_T = [1/3, 1/6, -1/2], d_S = [1/3, -1/6, -1/6] -> +1, -1, +1.
INTRA_HAND = 1 - (1 - 1 + 1) / 3


def test_dist_hand_rows_have_the_stated_probabilities():
    assert _softmax_by_hand(DIST_TEACHER[1]) == pytest.approx([1 / 6, 1 / 6, 2 / 3])
    assert _softmax_by_hand(DIST_STUDENT[0]) == pytest.approx([1 / 2, 1 / 6, 1 / 3])


def test_dist_terms_match_hand_computed_values():
    s, t = torch.tensor(DIST_STUDENT), torch.tensor(DIST_TEACHER)
    inter, intra = dist_terms(s, t, temperature=1.0)
    assert inter.item() == pytest.approx(INTER_HAND, rel=1e-5)
    assert intra.item() == pytest.approx(INTRA_HAND, rel=1e-5)
    inter2, intra2 = dist_terms(2 * s, 2 * t, temperature=2.0)
    assert inter2.item() == pytest.approx(4 * INTER_HAND, rel=1e-5)
    assert intra2.item() == pytest.approx(4 * INTRA_HAND, rel=1e-5)
    loss = dist_loss(s, t, beta=2.0, gamma=3.0, temperature=1.0)
    assert loss.item() == pytest.approx(2 * INTER_HAND + 3 * INTRA_HAND, rel=1e-5)


def test_pearson_is_scale_and_shift_invariant_along_dim():
    a = torch.tensor([[1.0, 2.0, 4.0], [0.0, 1.0, 0.0]])
    assert pearson(a, 3 * a + 1, dim=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert pearson(a, -a, dim=0).tolist() == pytest.approx([-1.0, -1.0, -1.0], abs=1e-6)


def test_dist_is_zero_for_identical_logits_and_invariant_to_a_row_constant():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 6, generator=g), torch.randn(5, 6, generator=g)
    # Zero up to the eps in pearson's denominator (relative to the squared norms of the centred
    # probabilities, which are small at high T); hence T = 1 here.
    assert dist_loss(s, s.clone(), 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-5)
    shift = torch.randn(5, 1, generator=g) * 10
    assert dist_loss(s + shift, t - shift, 1.0, 1.0, 4.0).item() == pytest.approx(
        dist_loss(s, t, 1.0, 1.0, 4.0).item(), rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        dist_terms(torch.zeros(2, 3), torch.zeros(3, 3), 1.0)


# --- Logit standardisation (Sun et al., CVPR 2024, arXiv:2403.01427) ------------------------------

def test_standardize_matches_hand_z_scores():
    # Row 0: [1, 2, 3, 6], mean 3, deviations [-2, -1, 0, 3], unbiased var (4 + 1 + 0 + 9) / 3 = 14/3.
    # Row 1: [0, 0, 4, 4], mean 2, deviations [-2, -2, 2, 2], unbiased var 16/3, std 4/sqrt(3).
    z = standardize(torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 4.0, 4.0]]))
    sd0 = math.sqrt(14 / 3)
    assert z[0].tolist() == pytest.approx([-2 / sd0, -1 / sd0, 0.0, 3 / sd0], rel=1e-5)
    h = math.sqrt(3) / 2
    assert z[1].tolist() == pytest.approx([-h, -h, h, h], rel=1e-5)


def test_standardize_gives_zero_mean_unit_unbiased_std_per_row():
    g = torch.Generator().manual_seed(3)
    z = standardize(torch.randn(6, 10, generator=g) * 7 + 3)
    assert z.mean(-1).abs().max().item() < 1e-5
    assert z.std(-1).tolist() == pytest.approx([1.0] * 6, abs=1e-5)
    with pytest.raises(ValueError, match="two logits"):
        standardize(torch.zeros(3, 1))


def test_kd_of_standardized_logits_ignores_the_teachers_scale():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    base = kd_loss(standardize(s), standardize(t), 2.0).item()
    for k in (0.1, 3.0, 25.0):
        assert kd_loss(standardize(s), standardize(k * t + 1.5), 2.0).item() == pytest.approx(base, rel=1e-4)


# --- FitNets hints (Romero et al., ICLR 2015, arXiv:1412.6550) -------------------------------------

def test_hint_loss_is_the_mean_squared_error_by_hand():
    # Differences 1, 0, -2, 1 | 0, 0, 0, 3 -> squares 1, 0, 4, 1, 0, 0, 0, 9: mean 15 / 8.
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 3.0]]]])  # [2, 1, 2, 2]
    t = torch.tensor([[[[0.0, 2.0], [5.0, 3.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    assert hint_loss(s, t).item() == pytest.approx(15 / 8, rel=1e-6)


def test_hint_loss_mismatch_names_both_shapes_and_the_connector():
    with pytest.raises(ValueError, match=r"\(2, 8, 4, 4\).*\(2, 16, 4, 4\).*connector"):
        hint_loss(torch.zeros(2, 8, 4, 4), torch.zeros(2, 16, 4, 4))


# --- shared properties ------------------------------------------------------------------------------

CONFIDENT = torch.tensor([[50.0, -50.0, 0.0], [0.0, 50.0, -50.0]])  # softmax rows of ~one-hot


def _all_losses(s, t):
    y = torch.tensor([0, 2])
    return {
        "kd": kd_loss(s, t, 4.0),
        "dkd": dkd_loss(s, t, y, 1.0, 8.0, 1.0),
        "dkd_t4": dkd_loss(s, t, y, 1.0, 8.0, 4.0),
        "dist": dist_loss(s, t, 1.0, 1.0, 1.0),
        "kd_std": kd_loss(standardize(s), standardize(t), 2.0),
        "hint": hint_loss(s, t),
    }


def test_gradients_reach_the_student_and_stay_finite_for_confident_teachers():
    for name, _ in _all_losses(torch.zeros(2, 3), CONFIDENT).items():
        s = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.0, -1.0]], requires_grad=True)
        loss = _all_losses(s, CONFIDENT)[name]
        loss.backward()
        assert torch.isfinite(loss).item(), name
        assert s.grad is not None and torch.isfinite(s.grad).all().item(), name
        assert s.grad.abs().sum().item() > 0, name
    # Even a student as confident as the teacher, and a teacher whose target prob underflows to 0.
    for s0, t in ((CONFIDENT, CONFIDENT), (CONFIDENT.flip(1), 4 * CONFIDENT)):
        s = s0.clone().requires_grad_(True)
        loss = dkd_loss(s, t, torch.tensor([1, 0]), 1.0, 8.0, 1.0)
        loss.backward()
        assert torch.isfinite(loss).item() and torch.isfinite(s.grad).all().item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32_losses(dtype):
    s = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.0, -1.0]], dtype=dtype)
    t = torch.tensor([[2.0, -1.0, 0.0], [0.0, 1.5, -0.5]], dtype=dtype)
    for name, loss in _all_losses(s, t).items():
        assert loss.dtype == torch.float32, name
    assert standardize(s).dtype == torch.float32
    assert all(x.dtype == torch.float32 for x in (*dkd_terms(s, t, torch.tensor([0, 1]), 2.0),
                                                  *dist_terms(s, t, 2.0)))
