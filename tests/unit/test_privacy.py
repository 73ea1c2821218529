"""Loss-threshold membership inference (Yeom et al., 2018): hand-computed AUCs, and the attack telling
an overfitted model from a well-regularised one on scikit-learn's bundled digits."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdflow.evaluation import stats
from kdflow.evaluation.privacy import membership_inference, per_sample_loss


def test_auc_threshold_and_advantage_match_hand_values_with_ties():
    # Pairs (member loss vs non-member loss; the member "wins" with the LOWER loss, ties count 1/2):
    #   0.1 vs 0.5, 0.9: 1 + 1;  0.5 vs 0.5, 0.9: 1/2 + 1;  0.5 again: 1/2 + 1   -> 5 of 6 pairs.
    # Threshold = mean member loss = 1.1 / 3; TPR = 1/3 (only 0.1 is below), FPR = 0.
    r = membership_inference(np.array([0.1, 0.5, 0.5]), np.array([0.5, 0.9]), 0, 0.95, seed=0)
    assert r.auc == pytest.approx(5 / 6)
    assert r.threshold == pytest.approx(1.1 / 3)
    assert r.advantage == pytest.approx(1 / 3)
    assert (r.members, r.nonmembers) == (3, 2)
    assert math.isnan(r.auc_low) and math.isnan(r.auc_high)  # resamples == 0: not computed
    assert r.to_dict() == {"auc": r.auc, "auc_low": r.auc_low, "auc_high": r.auc_high, "advantage": r.advantage,
                           "threshold": r.threshold, "members": 3, "nonmembers": 2}


def test_auc_extremes():
    assert membership_inference(np.full(4, 0.3), np.full(5, 0.3), 0, 0.95, seed=0).auc == 0.5  # all tied
    assert membership_inference(np.array([2.0, 3.0]), np.array([0.5, 1.0]), 0, 0.95, seed=0).auc == 0.0
    # Perfectly separated: every resample is too. Threshold 0.05 catches member 0.0 only: TPR 1/2, FPR 0.
    separated = membership_inference(np.array([0.0, 0.1]), np.array([1.0, 2.0, 3.0]), 100, 0.95, seed=0)
    assert (separated.auc, separated.auc_low, separated.auc_high) == (1.0, 1.0, 1.0)
    assert separated.advantage == 0.5


def test_auc_agrees_with_scikit_learn_on_many_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    member = rng.integers(0, 6, 300).astype(float)  # integer losses: ties everywhere
    nonmember = rng.integers(1, 8, 400).astype(float)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(400)], -np.r_[member, nonmember])
    r = membership_inference(member, nonmember, 300, 0.95, seed=1)
    assert r.auc == pytest.approx(expected, abs=1e-12)
    assert r.auc_low < r.auc < r.auc_high
    assert r == membership_inference(member, nonmember, 300, 0.95, seed=1)  # deterministic for a seed


def test_bootstrap_is_chunked_and_independent_of_the_chunk_size(monkeypatch):
    rng = np.random.default_rng(2)
    member, nonmember = rng.random(120), rng.random(80) + 0.1
    whole = membership_inference(member, nonmember, 50, 0.9, seed=7)
    shapes = []
    draw = stats.resample_counts

    def recording(rng, n, r):
        shapes.append((r, n))
        return draw(rng, n, r)

    monkeypatch.setattr(stats, "MAX_CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr("kdflow.evaluation.privacy.resample_counts", recording)
    assert membership_inference(member, nonmember, 50, 0.9, seed=7) == whole
    # 1000 // (2 * 200) = 2 resamples a chunk, each drawing a member and a non-member block.
    assert {r for r, _ in shapes} == {2} and sum(r for r, n in shapes if n == 120) == 50


def test_either_side_empty_is_an_error():
    with pytest.raises(ValueError, match="needs members and non-members"):
        membership_inference(np.zeros(0), np.ones(3), 10, 0.95, seed=0)
    with pytest.raises(ValueError, match="needs members and non-members"):
        membership_inference(np.ones(3), np.zeros(0), 10, 0.95, seed=0)


def test_per_sample_loss_matches_torch_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g) * 5
    labels = torch.randint(0, 7, (50,), generator=g)
    loss = per_sample_loss(logits, labels)
    assert loss.dtype == np.float64 and loss.shape == (50,)
    np.testing.assert_allclose(loss, F.cross_entropy(logits.double(), labels, reduction="none").numpy(), rtol=1e-12)
    np.testing.assert_allclose(loss, F.cross_entropy(logits, labels, reduction="none").numpy(), rtol=1e-4)
    # A confidently right row: float64 keeps its loss (e^-40 ~ 4e-18) where float32 rounds it to 0.
    tiny = per_sample_loss(torch.tensor([[40.0, 0.0]]), torch.tensor([0]))
    assert tiny[0] == pytest.approx(math.exp(-40.0), rel=1e-6)


# --- the attack separates an overfitted model from a regularised one -------------------------------

PER_CLASS = 70  # members and non-members per class: 700 of each, of the 1797 digits
LABEL_NOISE = 0.4  # fraction of digits whose label is replaced by a uniformly random class


def _digits_split(seed: int):
    """Digits scaled to [0, 1] with noisy labels, and disjoint class-balanced member / non-member rows.

    Label noise is applied to the whole pool before the split, so members and non-members come from
    the same (noisy) distribution: a model can only fit a member's random label by memorising it,
    which is exactly the leakage the attack measures. Both sides hold PER_CLASS rows of each class,
    so a model's learnt class prior alone cannot tell them apart.
    """
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32)  # [1797, 64]
    y = torch.tensor(y)  # [1797]
    g = torch.Generator().manual_seed(seed)
    noisy = torch.rand(len(y), generator=g) < LABEL_NOISE
    y = torch.where(noisy, torch.randint(0, 10, (len(y),), generator=g), y)
    perm = torch.randperm(len(y), generator=g)
    by_class = [perm[y[perm] == c] for c in range(10)]
    assert min(len(rows) for rows in by_class) >= 2 * PER_CLASS
    members = torch.cat([rows[:PER_CLASS] for rows in by_class])
    nonmembers = torch.cat([rows[PER_CLASS:2 * PER_CLASS] for rows in by_class])
    return x, y, members, nonmembers


def _fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x, y, steps: int) -> torch.nn.Module:
    for _ in range(steps):  # full batch
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model


def _attack(model, x, y, members, nonmembers):
    with torch.no_grad():
        return membership_inference(per_sample_loss(model(x[members]), y[members]),
                                    per_sample_loss(model(x[nonmembers]), y[nonmembers]), 500, 0.95, seed=0)


@pytest.fixture
def one_thread():
    """These matrices are tiny: with several threads, synchronisation dominates and a busy machine makes the
    test many times slower. The setting is process-wide, so it is put back."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_attack_separates_an_overfitted_model_from_a_regularised_one(one_thread):
    seed = 0
    x, y, members, nonmembers = _digits_split(seed)

    # Overfitted: a wide MLP, no regularisation, trained until it has memorised every member label.
    torch.manual_seed(seed)
    wide = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    _fit(wide, torch.optim.Adam(wide.parameters(), lr=5e-3), x[members], y[members], steps=400)
    # Regularised: a linear model with weight decay, stopped early.
    torch.manual_seed(seed)
    linear = torch.nn.Linear(64, 10)
    _fit(linear, torch.optim.SGD(linear.parameters(), lr=0.2, weight_decay=0.05), x[members], y[members], steps=100)

    with torch.no_grad():
        # 40% of member labels are random: a loss this far below chance (ln 10 = 2.3) means memorised.
        assert F.cross_entropy(wide(x[members]), y[members]).item() < 0.05
    overfitted = _attack(wide, x, y, members, nonmembers)
    regularised = _attack(linear, x, y, members, nonmembers)
    # Measured at seed 0: overfitted AUC 0.854 [0.831, 0.875], regularised 0.528 [0.497, 0.558]
    # (seeds 0-7: overfitted 0.83-0.85, regularised 0.49-0.55).
    assert overfitted.auc > 0.75
    assert regularised.auc < 0.6
    assert overfitted.auc_low > regularised.auc_high
    assert overfitted.advantage > regularised.advantage
