"""`kdflow bench throughput --profile quick` on the CPU: every measurement is made and reported side by side
(structure only: nothing here asserts a speed)."""

import json

import pytest
from click.testing import CliRunner

from kdflow.bench import throughput
from kdflow.cli import main

pytestmark = pytest.mark.e2e


def test_quick_throughput_benchmark_reports_both_pairs_with_ratios(tmp_path):
    res = CliRunner().invoke(main, ["bench", "throughput", "--profile", "quick", "--workdir", str(tmp_path / "w"),
                                    "--output", str(tmp_path / "b.md")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "w" / "throughput-results.json").read_text())
    assert set(results["pairs"]) == {"imagenet", "cifar"}
    for name, r in results["pairs"].items():
        assert (r["teacher"], r["student"]) == throughput.PAIRS[name]
        for key in ("student_ceiling", "teacher_ceiling", "teacher_e2e", "offline", "online"):
            assert r[key] is not None and r[key] > 0, (name, key)
    assert "skipped" in results["pipeline"]
    text = (tmp_path / "b.md").read_text()
    assert "## Throughput, profile quick (" in text and "CPU, reduced" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2  # the header, then one row per pair
    assert table[1].startswith("| resnet50 -> resnet18 | 32 |") and table[2].startswith("| resnet56 -> resnet20 |")
    cells = table[1].strip("|").split("|")
    assert cells[2].strip() == "-"  # no absolute figures from a CPU
    float(cells[4]), float(cells[6]), float(cells[9])  # offline / ceiling, online / offline, e2e / ceiling
    assert "CIFAR-10 pipeline figure: skipped" in text
