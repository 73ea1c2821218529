"""`kdflow bench scale`'s verdicts from its measurements (the command itself, each step in its own
process: tests/e2e/test_bench_scale.py)."""

import pytest

from kdflow.bench import scale


def test_growth_and_verdicts_compare_the_largest_size_with_the_smallest():
    ms = [{"step": s, "n": n, "peak_rss_kib": kib, "tree_peak_kib": kib, "wall_s": 1.0, "result": {}}
          for s, n, kib in [("preprocess", 10, 1000), ("preprocess", 40, 1400), ("preprocess", 160, 1200),
                            ("teacher", 10, 1000), ("teacher", 160, 1300), ("train", 160, 2000), ("train", 10, 1000)]]
    results = {"measurements": ms}
    assert scale.growth(results) == pytest.approx({"preprocess": 0.2, "teacher": 0.3, "train": 1.0})
    assert scale.verdicts(results) == {"preprocess": True, "teacher": False, "train": False}
