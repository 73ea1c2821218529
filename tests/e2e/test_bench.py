"""The quality benchmark's plumbing, on generated data (the real run needs ../shared's CIFAR-10)."""

import pytest
import torch

from kdflow.bench import quality
from kdflow.models import create_model
from tests.helpers import make_image_folder

pytestmark = pytest.mark.e2e


def test_smoke_profile_runs_every_row_and_reports_against_ce(tmp_path):
    data = tmp_path / "data"
    make_image_folder(data / "train", per_class=14, size=32)
    make_image_folder(data / "test", per_class=6, size=32)
    teacher = tmp_path / "teacher.th"
    torch.manual_seed(0)
    torch.save({"state_dict": {f"module.{k}": v for k, v in create_model("resnet8", 3).state_dict().items()}},
               teacher)
    results = quality.run(data, teacher, tmp_path / "work", "smoke", teacher_arch="resnet8")
    assert list(results["rows"]) == list(quality.ROWS)
    views = {row: runs[0]["views"] for row, runs in results["rows"].items()}
    assert views == {"ce": 0, "kd-plain": 0, "kd-views": 2, "kd-online": 0}
    assert results["adaptation"]["adapted"] and results["counts"]["test"] == 18
    text = quality.report(results, "kdflow bench quality --profile smoke")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(quality.ROWS)  # the header, then one line per row
    assert lines[1].startswith("| ce |") and "| +0.00 |" in lines[1]
    assert lines[4].startswith("| kd-online |") and lines[4].endswith("| 1.00 |")
    assert "kd-views vs kd-online: top-1" in text
    assert results["labelling"]["kd-views"]["views"] == 2 and results["labelling"]["ce"]["views"] == 0
