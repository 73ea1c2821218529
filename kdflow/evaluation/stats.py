"""Percentile-bootstrap confidence intervals for per-sample metrics (accuracy, paired differences).

The percentile bootstrap (Efron & Tibshirani, 1993, "An Introduction to the Bootstrap", ch. 13):
resample the N rows with replacement, recompute the statistic, and take the (1 - c)/2 and (1 + c)/2
quantiles of the resampled statistics as the c-level interval. It needs no normality assumption,
which matters for accuracies near 0 or 1 on small test splits.

A resample is drawn as a row of counts (how many times each original row was picked), so any
statistic that is a weighted sum over rows is one matrix product per chunk. Resamples are drawn in
chunks of at most ``MAX_CHUNK_ELEMENTS`` indices: N = 100k with 1000 resamples would otherwise
allocate 100M int64 indices (800 MB) at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

# Indices drawn per chunk: about 8 MB of int64 each for the indices, the offsets and the counts.
MAX_CHUNK_ELEMENTS = 1 << 20


def check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def chunk_sizes(resamples: int, row_elements: int) -> Iterator[int]:
    """Split ``resamples`` into chunks of r resamples with r * row_elements <= MAX_CHUNK_ELEMENTS (r >= 1).

    The chunk size only bounds memory: each caller draws its resamples from one sequential random
    stream, so results do not depend on it.
    """
    per_chunk = max(1, MAX_CHUNK_ELEMENTS // max(row_elements, 1))
    done = 0
    while done < resamples:
        r = min(per_chunk, resamples - done)
        yield r
        done += r


def resample_counts(rng: np.random.Generator, n: int, r: int) -> np.ndarray:
    """Int64 [r, n]: row k counts how often each of the n rows was drawn in bootstrap resample k.

    Each row sums to n. Drawn as uniform indices and binned (one bincount over offset indices
    for the whole chunk), which has exactly the bootstrap's multinomial(n, 1/n) distribution.
    """
    idx = rng.integers(0, n, size=(r, n))  # [r, n]
    flat = (idx + np.arange(r, dtype=np.int64)[:, None] * n).ravel()  # [r * n], row k in [k n, (k+1) n)
    return np.bincount(flat, minlength=r * n).reshape(r, n)  # [r, n]


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval: the (1 - c)/2 and (1 + c)/2 quantiles of the bootstrap replicates."""
    low, high = np.quantile(samples, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Float64 [resamples]: the mean of ``values`` (float64 [N]) over each bootstrap resample."""
    n = len(values)
    out = np.empty(resamples, dtype=np.float64)
    start = 0
    for r in chunk_sizes(resamples, n):
        out[start:start + r] = resample_counts(rng, n, r) @ values / n  # [r, n] @ [n] -> [r]
        start += r
    return out


def bootstrap_mean_ci(values: np.ndarray, resamples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap interval (Efron & Tibshirani, 1993) for the mean of per-sample ``values`` [N].

    ``values`` is e.g. 0/1 correctness per test row, so the mean is the accuracy. Deterministic for
    a given ``seed``. Returns (nan, nan) for no rows or ``resamples == 0`` ("not computed"), so a
    caller can switch the interval off without a separate code path.
    """
    check_confidence(confidence)
    values = np.asarray(values, dtype=np.float64).ravel()
    if len(values) == 0 or resamples <= 0:
        return math.nan, math.nan
    return percentile_interval(_bootstrap_means(values, resamples, np.random.default_rng(seed)), confidence)


def paired_difference_ci(a: np.ndarray, b: np.ndarray, resamples: int, confidence: float,
                         seed: int) -> tuple[float, float, float]:
    """(mean(a - b), low, high): paired percentile bootstrap (Efron & Tibshirani, 1993) on the same rows.

    ``a`` and ``b`` are per-sample values on the SAME rows (e.g. student and champion correctness on
    one test split). Rows are resampled jointly, which is resampling the per-row difference: the
    interval keeps the correlation between the two models, so it is much narrower than two
    independent intervals when both get the same rows right. Empty input gives nan for all three;
    ``resamples == 0`` gives the difference with a (nan, nan) interval.
    """
    check_confidence(confidence)
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b):
        raise ValueError(f"paired values must be on the same rows: {len(a)} != {len(b)}")
    if len(a) == 0:
        return math.nan, math.nan, math.nan
    diff = a - b  # [N]
    mean = float(diff.mean())
    if resamples <= 0:
        return mean, math.nan, math.nan
    low, high = percentile_interval(_bootstrap_means(diff, resamples, np.random.default_rng(seed)), confidence)
    return mean, low, high
