"""Membership inference: does the student's loss give away which rows it was trained on?

The loss-threshold attack of Yeom, Giacomelli, Fredrikson & Jha, 2018, "Privacy Risk in Machine
Learning: Analyzing the Connection to Overfitting" (IEEE CSF 2018): an attacker who sees a row and
its label guesses "member" when the model's loss on it is low. Its success is bounded by, and in
practice tracks, the generalisation gap, so it is a cheap check that a student has not memorised
its training split. We report the threshold-free AUC (with a bootstrap interval) and Yeom's
advantage (TPR - FPR) at the threshold he proposes, the expected training loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from kdflow.evaluation.stats import check_confidence, chunk_sizes, percentile_interval, resample_counts


def per_sample_loss(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Float64 [N] cross-entropy of each row of ``logits`` (float [N, C]) against ``labels`` (int64 [N]).

    Computed in float64: a memorised row has loss ~1e-9, below float32's resolution near the
    log-sum-exp, and the attack ranks exactly those tiny values.
    """
    logp = torch.log_softmax(logits.detach().to(torch.float64), dim=-1)  # [N, C]
    return (-logp.gather(-1, labels.long().view(-1, 1)).squeeze(-1)).cpu().numpy()  # [N]


@dataclass(frozen=True)
class MembershipInference:
    """Result of the loss-threshold attack; ``auc`` 0.5 is chance, 1.0 is a perfect attacker."""

    auc: float
    auc_low: float
    auc_high: float
    advantage: float
    threshold: float
    members: int
    nonmembers: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class _AucPairs:
    """Mann-Whitney U of score = -loss for members against non-members, with per-row weights.

    The non-member losses are sorted once; each member's rank among them (how many non-members
    have a strictly higher loss, plus half of those tied) is two binary searches. A bootstrap
    resample only changes the weights (counts) of rows, so its AUC is a cumulative sum and a
    gather, O(N) per resample: no re-sorting and no O(m n) pair matrix.
    """

    def __init__(self, member_losses: np.ndarray, nonmember_losses: np.ndarray):
        order = np.argsort(nonmember_losses, kind="stable")
        self.order = order  # [n]: sorted position -> non-member row
        ranked = nonmember_losses[order]  # [n] ascending
        self.lo = np.searchsorted(ranked, member_losses, side="left")  # [m]: non-members with loss < l_i
        self.hi = np.searchsorted(ranked, member_losses, side="right")  # [m]: ... with loss <= l_i

    def auc(self, member_w: np.ndarray, nonmember_w: np.ndarray) -> np.ndarray:
        """AUC per resample; ``member_w`` [r, m] and ``nonmember_w`` [r, n] are row counts."""
        cum = np.zeros((nonmember_w.shape[0], nonmember_w.shape[1] + 1))  # [r, n + 1]
        np.cumsum(nonmember_w[:, self.order], axis=1, out=cum[:, 1:])  # weight of the j lowest losses
        total = cum[:, -1:]  # [r, 1]
        # Per member: weight of non-members with higher loss, plus half of the tied weight.
        wins = total - 0.5 * (cum[:, self.hi] + cum[:, self.lo])  # [r, m]
        pairs = member_w.sum(axis=1) * total[:, 0]  # [r]
        return (member_w * wins).sum(axis=1) / pairs  # [r]


def membership_inference(member_losses: np.ndarray, nonmember_losses: np.ndarray, resamples: int,
                         confidence: float, seed: int) -> MembershipInference:
    """Loss-threshold membership inference (Yeom et al., 2018) from per-row losses.

    AUC = P(-loss_member > -loss_nonmember), ties counting 1/2: the Mann-Whitney U statistic over
    m n, computed from ranks in O(N log N). Its interval is a stratified percentile bootstrap
    (Efron & Tibshirani, 1993): members and non-members are resampled separately, so each
    resample keeps the split's sizes. ``resamples == 0`` leaves the interval nan. The advantage is
    TPR - FPR of "member if loss <= mean member loss" (Yeom et al.'s threshold).
    """
    check_confidence(confidence)
    member = np.asarray(member_losses, dtype=np.float64).ravel()
    nonmember = np.asarray(nonmember_losses, dtype=np.float64).ravel()
    if len(member) == 0 or len(nonmember) == 0:
        raise ValueError(f"membership inference needs members and non-members; got {len(member)} member and "
                         f"{len(nonmember)} non-member losses")
    m, n = len(member), len(nonmember)
    pairs = _AucPairs(member, nonmember)
    auc = float(pairs.auc(np.ones((1, m)), np.ones((1, n)))[0])

    low = high = float("nan")
    if resamples > 0:
        # One independent stream per stratum, so the replicates do not depend on the chunk size.
        member_rng, nonmember_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        replicates = np.empty(resamples)
        start = 0
        # The gathers and product make [r, m] arrays, the cumulative sum [r, n + 1]: chunk on both.
        for r in chunk_sizes(resamples, 2 * (m + n)):
            replicates[start:start + r] = pairs.auc(resample_counts(member_rng, m, r),
                                                    resample_counts(nonmember_rng, n, r))
            start += r
        low, high = percentile_interval(replicates, confidence)

    threshold = float(member.mean())
    advantage = float((member <= threshold).mean() - (nonmember <= threshold).mean())
    return MembershipInference(auc=auc, auc_low=low, auc_high=high, advantage=advantage, threshold=threshold,
                               members=m, nonmembers=n)
