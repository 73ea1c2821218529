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
    modes = {row: runs[0]["mode"] for row, runs in results["rows"].items()}
    assert views["kd-plain"] == 0 and views["kd-views"] == 2 and views["dkd"] == 2 and views["kd-k3"] == 2
    assert all(views[r] == 0 for r in ("ce", "kd-online", "dkd-online", "hint", "combined"))
    assert modes["ce"] == "none" and modes["dist"] == "offline" and modes["hint"] == modes["combined"] == "online"
    assert results["adaptation"]["adapted"] and results["counts"]["test"] == 18
    text = quality.report(results, "kdflow bench quality --profile smoke")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 1 + len(quality.ROWS)  # the header, then one line per row
    assert lines[1].startswith("| ce | none |") and "| +0.00 |" in lines[1]
    assert lines[4].startswith("| kd-online | online |") and lines[4].endswith("| 1.00 |")
    assert "kd-views vs kd-online: top-1" in text and "Best method row:" in text
    assert "kd-k3 vs kd-views" in text and "dkd-k3 vs dkd" in text
    labelling = results["labelling"]
    assert labelling["kd-views"]["views"] == 2 and labelling["ce"]["views"] == 0
    # kd-views and dkd share one entry, and share its labelling cost; the k = 3 entry is another one.
    keys = {row: label["cache_key"] for row, label in labelling.items()}
    assert keys["kd-views"] == keys["dkd"] == keys["dist"] != keys["kd-k3"] == keys["dkd-k3"]
    assert keys["ce"] == keys["hint"] == keys["kd-online"] != keys["kd-views"]
    assert labelling["kd-views"]["seconds"] == labelling["dkd"]["seconds"]
    assert labelling["kd-k3"]["top_k"] == 3 and labelling["kd-views"]["top_k"] == 10
    assert "- dkd: `{\"method\": \"dkd\"" in text and '"warmup_epochs": 0' in text  # 1 epoch: no warm-up
