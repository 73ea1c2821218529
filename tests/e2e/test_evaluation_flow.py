"""Evaluation, the gate against the champion, promotion and rollback: the whole flow through kfp.local
against a real ``mlflow server`` on loopback with its artifacts in a real S3 API server."""

import json
from pathlib import Path

import boto3
import pytest
import torch

from kdflow.config import Config
from kdflow.pipelines.local import run_local
from kdflow.cli.summary import read_summary
from tests.helpers import cli_in_process, run_kdflow, upload_folder

pytestmark = pytest.mark.e2e

NAME = "flow-student"
# A student that has barely started learning: clearly worse than the first one on the same images.
WORSE = {"train": {"epochs": 1, "batch_size": 16, "lr": 1e-5, "seed": 1}}


def _config(base_yaml: str, **sections) -> str:
    """The tiny config with the full evaluation (the shared one skips exports to keep other tests fast)."""
    data = Config.from_yaml(base_yaml.replace("tiny-student", NAME)).to_dict()
    data["evaluate"] = Config().to_dict()["evaluate"]
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    return Config.from_dict(data).to_yaml()


def _cli(*args, tracking_uri: str):
    """A registry command through the CLI's real entry point, in this process (exit status and output as
    a user sees them): the flow is about what promotion does to the server's registry, and a fresh
    interpreter per command would only add its start-up."""
    return cli_in_process(*args, "--tracking-uri", tracking_uri)


def _kfp_output(root: Path, artifact: str) -> dict:
    """The metadata kfp.local recorded for the evaluation task's output ``artifact`` (newest run)."""
    found = []
    for path in root.rglob("executor_output.json"):
        out = json.loads(path.read_text())
        for name, entry in out.get("artifacts", {}).items():
            if name == artifact:
                found.append((path.stat().st_mtime, entry["artifacts"][0]))
    assert found, f"no {artifact} output under {root}"
    return max(found, key=lambda f: f[0])[1]


def test_evaluation_gate_promotion_and_rollback(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml, mlflow_server,
                                                s3_bucket):
    from mlflow import MlflowClient

    s3 = boto3.client("s3")
    data_uri = upload_folder(tiny_data, s3_bucket, "datasets/flow")
    s3.upload_file(tiny_teacher, s3_bucket, "teachers/flow.pt")
    args = {"data_uri": data_uri, "teacher_uri": f"s3://{s3_bucket}/teachers/flow.pt",
            "cache_uri": f"s3://{s3_bucket}/flow-cache", "tracking_uri": mlflow_server, "auto_promote": True}
    root = tmp_path / "root"
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)

    # 1. The first student: no champion yet, so it is promoted on the absolute checks alone.
    first = read_summary(run_local(str(root), {**args, "config": _config(tiny_config_yaml)}), mlflow_server)
    assert first.registered_version == "1" and "champion" in first.aliases
    assert "no champion yet" in first.champion_check
    metrics = client.get_run(first.run_id).data.metrics
    for name in ("test_student_accuracy", "test_student_accuracy_ci_low", "test_student_accuracy_ci_high",
                 "test_student_top5", "test_teacher_accuracy", "test_teacher_top5", "test_agreement",
                 "test_agreement_ci_low", "test_student_ece", "student_parameters", "student_size_bytes",
                 "student_latency_p50_ms", "student_latency_p95_ms", "student_throughput", "teacher_latency_p95_ms",
                 "teacher_throughput", "latency_speedup", "throughput_speedup", "size_ratio", "mia_auc",
                 "mia_auc_ci_low", "mia_auc_ci_high", "gate.min_teacher_accuracy", "gate.exports_match"):
        assert name in metrics, name
    low, top1, high = (metrics[f"test_student_accuracy{s}"] for s in ("_ci_low", "", "_ci_high"))
    assert 0 <= low <= top1 <= high <= 1
    assert metrics["student_parameters"] < metrics["teacher_parameters"] and 0 <= metrics["mia_auc"] <= 1
    artifacts = {a.path for folder in ("evaluation", "export") for a in client.list_artifacts(first.run_id, folder)}
    assert {"evaluation/confusion_matrix.png", "evaluation/reliability_diagram.png", "evaluation/report.html",
            "evaluation/predictions.npz", "evaluation/evaluation.json", "export/model.ts", "export/model.onnx",
            "export/verification.json"} <= artifacts
    png = client.download_artifacts(first.run_id, "evaluation/confusion_matrix.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = Path(client.download_artifacts(first.run_id, "evaluation/report.html", str(tmp_path))).read_text()
    assert "membership inference (loss threshold, Yeom et al. 2018)" in report
    assert f"Attack AUC {metrics['mia_auc']:.3f}" in report and report.count("data:image/png;base64,") == 2
    verification = json.loads(Path(client.download_artifacts(first.run_id, "export/verification.json",
                                                              str(tmp_path))).read_text())
    assert {e["format"] for e in verification["exports"]} == {"torchscript", "onnx"}
    assert all(e["passed"] and e["max_abs_diff"] <= e["tolerance"] for e in verification["exports"])
    # The TorchScript export serves the same logits as the registered PyTorch model.
    import mlflow.pytorch

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    scripted = torch.jit.load(client.download_artifacts(first.run_id, "export/model.ts", str(tmp_path)))
    x = torch.rand(3, 3, 12, 12)
    registered = mlflow.pytorch.load_model(f"models:/{NAME}/1")
    assert torch.allclose(scripted(x), registered(x), atol=1e-4)

    # The version carries the verdict, every check and the lineage.
    v1 = client.get_model_version(NAME, "1")
    assert v1.tags["kdflow.gate_passed"] == "true" and v1.tags["kdflow.promotable"] == "true"
    assert v1.tags["kdflow.gate.min_teacher_accuracy"].startswith("pass")
    assert v1.tags["kdflow.export.onnx"] == f"runs:/{first.run_id}/export/model.onnx"
    onnx_check = v1.tags["kdflow.export.onnx.check"]
    assert onnx_check.startswith("pass") and "onnxruntime" in onnx_check
    for tag in ("kdflow.teacher_digest", "kdflow.dataset_fingerprint", "kdflow.softlabel_cache_key", "kdflow.method",
                "kdflow.config_hash", "kdflow.pipeline_run", "kdflow.code_version", "kdflow.run_id"):
        assert v1.tags.get(tag), tag

    # KFP's view: headline metrics, the confusion matrix (ClassificationMetrics) and the HTML report.
    confusion = _kfp_output(root, "classification")["metadata"]["confusionMatrix"]
    assert len(confusion["annotationSpecs"]) == 3 and len(confusion["rows"]) == 3
    assert "test_student_accuracy" in _kfp_output(root, "metrics")["metadata"]

    # 2. A worse student on the same data: registered (the absolute gate is lenient here) but not
    # promoted, and the reason is recorded on its version.
    # (Its exports are not what this part is about: the first student's were checked above.)
    worse_config = _config(tiny_config_yaml, **WORSE, evaluate={"export": []})
    second = read_summary(run_local(str(root), {**args, "config": worse_config}), mlflow_server)
    assert second.registered_version == "2" and "champion" not in second.aliases
    worse = "worse by more than gate.champion_tolerance"
    assert second.champion_check.startswith("FAIL") and worse in second.champion_check
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["kdflow.promotable"] == "false"
    assert v2.tags["kdflow.promotion"].startswith("refused") and worse in v2.tags["kdflow.promotion"]
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"

    # 3. By hand: refused with the reason (exit 3), forced with a reason, rolled back.
    refused = _cli("promote", NAME, "2", tracking_uri=mlflow_server)
    assert refused.code == 3, refused.err
    assert worse in refused.out + refused.err
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    forced = _cli("promote", NAME, "2", "--force", "--reason", "canary says fine", tracking_uri=mlflow_server)
    assert forced.code == 0, forced.err
    assert client.get_model_version_by_alias(NAME, "champion").version == "2"
    assert client.get_model_version(NAME, "2").tags["kdflow.promotion.reason"] == "canary says fine"
    back = _cli("rollback", NAME, tracking_uri=mlflow_server)
    assert back.code == 0, back.err
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    table = _cli("registry", NAME, tracking_uri=mlflow_server)
    assert table.code == 0, table.err
    lines = table.out.splitlines()
    assert any("champion" in line and line.split()[0] == "1" for line in lines), table.out
    assert any(line.split()[0] == "2" for line in lines), table.out


def test_a_mis_normalised_teacher_stops_the_run(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml):
    """Normalisation given in 0-255 units (a common slip): the teacher sees nonsense, teacher inference
    stops the run with the diagnosis, and nothing is half-written: no cache entry, no MLflow run."""
    import sqlite3

    from kdflow.models.loading import load_checkpoint

    model, _ = load_checkpoint(Path(tiny_teacher).read_bytes())
    weights = tmp_path / "teacher_state_dict.pt"
    torch.save(model.net.state_dict(), weights)  # bare weights: the config's normalisation applies
    config = tmp_path / "run.yaml"
    config.write_text(_config(tiny_config_yaml, teacher={"mean": [125.3, 123.0, 113.9], "std": [63.0, 62.1, 66.7]}))
    done = run_kdflow("run", "--data", str(tiny_data), "--teacher", str(weights), "--config", str(config),
                      "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert done.returncode == 1
    said = done.stdout + done.stderr  # kfp.local prints the failing task's log
    assert "below gate.min_teacher_accuracy=0.5" in said and "divide them by 255" in said
    assert not list((tmp_path / "work" / "cache").rglob("entries/*.json"))
    db = tmp_path / "work" / "mlflow.db"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("select count(*) from runs").fetchone()[0] == 0
            assert conn.execute("select count(*) from model_versions").fetchone()[0] == 0
