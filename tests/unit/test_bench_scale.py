"""`kdflow bench scale --quick` end to end on tiny sizes: the table's structure and measured (positive) peak
RSS per step and size. The growth criterion is not asserted here: at these sizes the interpreter and torch
dominate the figures (the default sizes are for that)."""

import json

import pytest
from click.testing import CliRunner

from kdflow.bench import scale
from kdflow.cli import main


def test_quick_scale_benchmark_measures_every_step_in_its_own_process(tmp_path):
    out = tmp_path / "benchmarks.md"
    res = CliRunner().invoke(main, ["bench", "scale", "--quick", "--workdir", str(tmp_path / "work"),
                                    "--output", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "work" / "scale-results.json").read_text())
    assert results["sizes"] == list(scale.QUICK_SIZES) and results["quick"]
    rows = {(m["step"], m["n"]): m for m in results["measurements"]}
    assert set(rows) == {(s, n) for s in scale.STEPS for n in scale.QUICK_SIZES}
    for m in rows.values():
        assert m["peak_rss_kib"] > 50 * 1024  # an interpreter with torch: tens of MiB at the very least
        assert m["tree_peak_kib"] >= m["peak_rss_kib"] and m["wall_s"] > 0
    # Each step ran for real on its own outputs: shards, a cache miss, one epoch.
    largest = scale.QUICK_SIZES[-1]
    assert sum(rows[("preprocess", largest)]["result"]["counts"].values()) == largest
    assert rows[("teacher", largest)]["result"] == {"step": "teacher", "cache_hit": False, "views": 1}
    assert "train_loss" in rows[("train", largest)]["result"]["final_metrics"]
    text = out.read_text()
    assert "## Scale, quick (" in text and "Command: `kdflow bench scale" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| step | N | peak RSS (MiB) | growth vs smallest N |")
    assert len(table) == 1 + len(scale.STEPS) * len(scale.QUICK_SIZES)
    assert table[1].startswith(f"| preprocess | {scale.QUICK_SIZES[0]} |") and "| +0.0% |" in table[1]
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert [v.split(":")[0] for v in verdicts] == ["- preprocess", "- teacher", "- train"]
    assert all(("PASS" in v) != ("FAIL" in v) for v in verdicts)


def test_growth_and_verdicts_compare_the_largest_size_with_the_smallest():
    ms = [{"step": s, "n": n, "peak_rss_kib": kib, "tree_peak_kib": kib, "wall_s": 1.0, "result": {}}
          for s, n, kib in [("preprocess", 10, 1000), ("preprocess", 40, 1400), ("preprocess", 160, 1200),
                            ("teacher", 10, 1000), ("teacher", 160, 1300), ("train", 160, 2000), ("train", 10, 1000)]]
    results = {"measurements": ms}
    assert scale.growth(results) == pytest.approx({"preprocess": 0.2, "teacher": 0.3, "train": 1.0})
    assert scale.verdicts(results) == {"preprocess": True, "teacher": False, "train": False}
