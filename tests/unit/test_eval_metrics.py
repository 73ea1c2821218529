"""Top-k, confusion matrix, bootstrap intervals and calibration against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from kdflow.evaluation import stats
from kdflow.evaluation.accuracy import confusion_matrix, topk_correct
from kdflow.evaluation.calibration import expected_calibration_error, reliability_bins
from kdflow.evaluation.stats import bootstrap_mean_ci, paired_difference_ci

# --- top-k and confusion matrix -------------------------------------------------------------------


def test_topk_correct_matches_hand_ranking():
    # Row 0 ranks classes 3 > 1 > 2 > 0, label 1 is second; row 1 ranks 0 > 1 > 2 > 3, label 3 is last.
    logits = torch.tensor([[0.1, 0.5, 0.2, 0.9], [3.0, 2.0, 1.0, 0.0]])
    labels = torch.tensor([1, 3])
    assert topk_correct(logits, labels, 1).tolist() == [False, False]
    assert topk_correct(logits, labels, 2).tolist() == [True, False]
    assert topk_correct(logits, labels, 3).tolist() == [True, False]
    assert topk_correct(logits, labels, 4).tolist() == [True, True]
    assert topk_correct(logits, labels, 1).dtype == torch.bool


def test_topk_correct_clamps_k_to_the_number_of_classes():
    logits = torch.tensor([[0.0, 1.0, 2.0], [5.0, -1.0, 0.0]])
    assert topk_correct(logits, torch.tensor([0, 1]), 5).tolist() == [True, True]
    with pytest.raises(ValueError, match="k must be"):
        topk_correct(logits, torch.tensor([0, 1]), 0)


def test_confusion_matrix_rows_are_true_columns_predicted():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    m = confusion_matrix(pred, labels, 3)
    assert m.dtype == np.int64
    assert m.tolist() == [[1, 1, 0],
                          [0, 1, 1],
                          [0, 0, 2]]
    assert confusion_matrix(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2).tolist() == [
        [0, 0], [0, 0]]


def test_confusion_matrix_agrees_with_scikit_learn_and_rejects_bad_indices():
    from sklearn.metrics import confusion_matrix as sk_confusion

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (500,), generator=g)
    pred = torch.randint(0, 7, (500,), generator=g)
    np.testing.assert_array_equal(confusion_matrix(pred, labels, 7), sk_confusion(labels, pred, labels=range(7)))
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


# --- bootstrap ------------------------------------------------------------------------------------


def test_bootstrap_of_two_values_follows_the_exact_resampling_distribution():
    # Resampling [0, 1] gives means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4. The 5% and 95%
    # quantiles are therefore 0 and 1; the 30% and 70% quantiles both fall on 1/2.
    values = np.array([0.0, 1.0])
    assert bootstrap_mean_ci(values, 4000, 0.9, seed=0) == (0.0, 1.0)
    assert bootstrap_mean_ci(values, 4000, 0.4, seed=0) == (0.5, 0.5)


def test_bootstrap_interval_has_the_binomial_width():
    # 1600 ones and 400 zeros: accuracy 0.8, normal-approximation 95% width 2 * 1.96 * sqrt(0.8 * 0.2 / 2000)
    # = 0.03506; the percentile bootstrap agrees with it to well within 0.004 at this size.
    values = np.r_[np.ones(1600), np.zeros(400)]
    low, high = bootstrap_mean_ci(values, 2000, 0.95, seed=1)
    assert low < 0.8 < high
    assert high - low == pytest.approx(0.03506, abs=0.004)
    assert (0.8 - low) == pytest.approx(high - 0.8, abs=0.004)


def test_bootstrap_is_deterministic_constant_and_empty_safe():
    values = np.random.default_rng(0).random(300)  # continuous, so two seeds cannot tie by chance
    assert bootstrap_mean_ci(values, 200, 0.95, seed=3) == bootstrap_mean_ci(values, 200, 0.95, seed=3)
    assert bootstrap_mean_ci(values, 200, 0.95, seed=3) != bootstrap_mean_ci(values, 200, 0.95, seed=4)
    assert bootstrap_mean_ci(np.full(50, 0.25), 100, 0.95, seed=0) == (0.25, 0.25)
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.zeros(0), 100, 0.95, seed=0))
    assert all(math.isnan(v) for v in bootstrap_mean_ci(values, 0, 0.95, seed=0))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_ci(values, 10, 1.0, seed=0)


def test_bootstrap_draws_in_bounded_chunks_with_the_same_result(monkeypatch):
    values = np.random.default_rng(0).random(1001)
    whole = bootstrap_mean_ci(values, 37, 0.9, seed=5)
    shapes = []
    draw = stats.resample_counts

    def recording(rng, n, r):
        shapes.append((r, n))
        return draw(rng, n, r)

    monkeypatch.setattr(stats, "MAX_CHUNK_ELEMENTS", 3000)
    monkeypatch.setattr(stats, "resample_counts", recording)
    assert bootstrap_mean_ci(values, 37, 0.9, seed=5) == whole
    # 3000 // 1001 = 2 resamples a chunk: 18 chunks of 2 and one of 1.
    assert all(r * n <= 3000 for r, n in shapes) and sum(r for r, _ in shapes) == 37 and len(shapes) == 19


def test_resample_counts_rows_sum_to_n():
    counts = stats.resample_counts(np.random.default_rng(0), 9, 4)
    assert counts.shape == (4, 9) and counts.sum(axis=1).tolist() == [9, 9, 9, 9]


def test_paired_difference_keeps_the_pairing():
    # The student gets exactly the champion's rows right except 10 of 1000 it gets wrong more: every
    # resampled difference is >= 0, so the paired interval cannot go below zero, and it is far
    # narrower than either model's own interval (whose ~0.05 widths overlap almost entirely).
    champion = np.r_[np.ones(700), np.zeros(300)]
    student = champion.copy()
    student[:10] = 0.0
    diff, low, high = paired_difference_ci(champion, student, 1000, 0.95, seed=0)
    assert diff == pytest.approx(0.01)
    assert 0.0 <= low < 0.01 < high < 0.025
    own_low, own_high = bootstrap_mean_ci(student, 1000, 0.95, seed=0)
    assert high - low < 0.5 * (own_high - own_low)


def test_paired_difference_edge_cases():
    a = np.array([1.0, 0.0, 1.0])
    assert paired_difference_ci(a, a, 100, 0.95, seed=0) == (0.0, 0.0, 0.0)
    assert paired_difference_ci(a + 1, a, 100, 0.95, seed=0) == (1.0, 1.0, 1.0)
    diff, low, high = paired_difference_ci(a, 1 - a, 0, 0.95, seed=0)
    assert diff == pytest.approx(1 / 3) and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in paired_difference_ci(np.zeros(0), np.zeros(0), 10, 0.95, seed=0))
    with pytest.raises(ValueError, match="same rows"):
        paired_difference_ci(a, a[:2], 100, 0.95, seed=0)


# --- calibration ----------------------------------------------------------------------------------

# Five bins of width 0.2. Confidence (max prob), correct?, bin:
#   0.9 yes -> 4;  0.7 no -> 3;  0.6 (an edge) yes -> 2;  0.8 (an edge) yes -> 3;  1.0 no -> 4;  0.4 (an edge) yes -> 1
HAND_PROBS = np.array([
    [0.9, 0.1, 0.0],
    [0.7, 0.3, 0.0],
    [0.6, 0.4, 0.0],
    [0.2, 0.8, 0.0],
    [1.0, 0.0, 0.0],
    [0.4, 0.35, 0.25],
])
HAND_LABELS = np.array([0, 1, 0, 1, 1, 0])


def test_reliability_bins_match_hand_binning():
    bins = reliability_bins(HAND_PROBS, HAND_LABELS, bins=5)
    assert [(b["lower"], b["upper"]) for b in bins] == [(0.0, 0.2), (0.2, 0.4), (0.4, 0.6), (0.6, 0.8), (0.8, 1.0)]
    assert [b["count"] for b in bins] == [0, 1, 1, 2, 2]
    assert bins[0]["confidence"] is None and bins[0]["accuracy"] is None
    assert [b["confidence"] for b in bins[1:]] == pytest.approx([0.4, 0.6, 0.75, 0.95])
    assert [b["accuracy"] for b in bins[1:]] == pytest.approx([1.0, 1.0, 0.5, 0.5])


def test_ece_matches_hand_value():
    # 1/6 |1 - 0.4| + 1/6 |1 - 0.6| + 2/6 |0.5 - 0.75| + 2/6 |0.5 - 0.95| = 0.1 + 0.0667 + 0.0833 + 0.15
    assert expected_calibration_error(reliability_bins(HAND_PROBS, HAND_LABELS, bins=5)) == pytest.approx(0.4)


def test_calibration_edge_cases():
    assert reliability_bins(np.array([[0.0, 0.0]]), np.array([0]), bins=4)[0]["count"] == 1  # confidence 0 -> bin 0
    empty = reliability_bins(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert len(empty) == 15 and sum(b["count"] for b in empty) == 0
    assert expected_calibration_error(empty) == 0.0
    # Always right with confidence 1: perfectly calibrated.
    assert expected_calibration_error(reliability_bins(np.eye(3), np.arange(3))) == 0.0
    with pytest.raises(ValueError):
        reliability_bins(np.zeros((2, 3)), np.zeros(3, dtype=int))
