"""`kdflow bench scale --quick` end to end on tiny sizes: the table's structure and measured (positive) peak
RSS per step and size. The growth criterion is not asserted here: at these sizes the interpreter and torch
dominate the figures (the default sizes are for that)."""

import json

import pytest
from click.testing import CliRunner

from kdflow.bench import scale
from kdflow.cli import main

pytestmark = pytest.mark.e2e


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
