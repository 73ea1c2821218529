"""`kdflow run`, as `make run` calls it: its summary, the soft-label cache, exit codes (with no arguments at
all: tests/e2e/test_default_run.py)."""

import re

import pytest

from kdflow.cli.summary import read_summary
from kdflow.softlabels.ref import SoftLabelRef
from tests.helpers import run_kdflow as kdflow
from tests.helpers import summary_fields as _summary

pytestmark = pytest.mark.e2e


def test_a_run_on_a_filled_cache_says_hit_and_registers(tmp_path, tiny_data, tiny_teacher, tiny_labelled,
                                                        tiny_config_yaml):
    """What `make run` prints the second time: the cache holds the entry a first run leaves (the same
    data, teacher, k and views: tiny_labelled's), so the teacher is not run. A first run's miss is in
    the next test; a second pipeline run finding the first one's entry, in test_pipeline_e2e.py."""
    cfg = tmp_path / "run.yaml"
    cfg.write_text(tiny_config_yaml)
    cache = tiny_labelled.copy_to(tmp_path / "labelled").cache  # distillation writes its checkpoints there
    done = kdflow("run", "--data", str(tiny_data), "--teacher", tiny_teacher, "--config", str(cfg),
                  "--workdir", str(tmp_path / "work"), "--cache-uri", str(cache), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    s = _summary(done.stdout)
    assert s["soft-label cache"] == f"{SoftLabelRef.load(str(tiny_labelled.ref)).cache_key} (hit: teacher not run)"
    assert "soft-label cache hit" in done.stdout + done.stderr
    assert s["registered"] == "tiny-student version 1 @challenger"
    assert re.fullmatch(r"[0-9a-f]{64}", s["dataset fingerprint"])


def test_gate_failure_exits_3_registers_nothing_and_bad_input_exits_2(tmp_path, tiny_data, tiny_teacher,
                                                                      tiny_config_yaml):
    """A student the gate refuses: exit 3, the reason in the summary and on the run, no model version."""
    from mlflow import MlflowClient

    cfg = tmp_path / "strict.yaml"
    cfg.write_text(tiny_config_yaml.replace("gate: {min_accuracy: 0.0, max_drop: 1.0}",
                                            "gate: {min_accuracy: 1.0, max_drop: 0.0}")
                   .replace("train: {epochs: 8, batch_size: 16, lr: 0.05", "train: {epochs: 1, batch_size: 16, lr: 0.000001"))
    work = tmp_path / "work"
    failed = kdflow("run", "--data", str(tiny_data), "--teacher", tiny_teacher, "--config", str(cfg),
                    "--workdir", str(work), cwd=tmp_path)
    assert failed.returncode == 3, failed.stderr[-3000:]
    s = _summary(failed.stdout)
    assert s["registered"].startswith("not registered (failed: FAIL min_accuracy")
    assert s["soft-label cache"].endswith("(miss: teacher ran)")
    # With no --tracking-uri or --cache-uri, a run keeps its state under --workdir.
    assert (work / "mlflow.db").is_file() and (work / "cache" / "softlabels").is_dir()
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    summary = read_summary(s["MLflow run"].split()[0], tracking)
    assert not summary.gate_passed and summary.registered_version is None
    assert summary.gate.startswith("failed: FAIL min_accuracy")
    assert MlflowClient(tracking, registry_uri=tracking).search_model_versions("name='tiny-student'") == []

    missing = kdflow("run", "--data", str(tmp_path / "nope"), "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "error: data folder" in missing.stderr and "fix:" in missing.stderr
    assert "Traceback" not in missing.stderr
