"""The whole pipeline through kfp.local against a real MLflow server and a real S3 API on loopback."""

import boto3
import numpy as np
import pytest

from kdflow.config import Config
from kdflow.cli.summary import read_summary
from kdflow.pipelines.local import run_local
from tests.helpers import upload_folder

pytestmark = pytest.mark.e2e


def _arguments(config_yaml, data, teacher, cache_uri, tracking_uri, **extra):
    cfg = Config.from_yaml(config_yaml)
    return {"data_uri": str(data), "teacher_uri": teacher, "config": cfg.to_yaml(), "cache_uri": cache_uri,
            "tracking_uri": tracking_uri, **extra}



def test_pipeline_registers_then_reuses_the_cache(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml,
                                                   mlflow_server, s3_bucket):
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient
    from mlflow.models import get_model_info

    config = tiny_config_yaml.replace("tiny-student", "e2e-student")
    cache_uri = f"s3://{s3_bucket}/softlabels-cache"
    s3 = boto3.client("s3")
    # Data and teacher in object storage, as on a cluster: nothing read from the submitting machine.
    data_uri = upload_folder(tiny_data, s3_bucket, "datasets/tiny")
    s3.upload_file(tiny_teacher, s3_bucket, "teachers/tiny.pt")
    args = _arguments(config, data_uri, f"s3://{s3_bucket}/teachers/tiny.pt", cache_uri, mlflow_server)

    first = read_summary(run_local(str(tmp_path / "root"), args), mlflow_server)
    assert not first.cache_hit and first.gate_passed
    assert first.registered_model == "e2e-student" and first.registered_version == "1"
    objects = s3.list_objects_v2(Bucket=s3_bucket, Prefix="softlabels-cache/")["Contents"]
    manifests = [o for o in objects if "/entries/" in o["Key"]]
    assert len(manifests) == 1 and manifests[0]["Key"].endswith(f"{first.cache_key}.json")
    # The plain view and the config's 2 augmented views, each committed by its own manifest.
    assert len([o for o in objects if "/manifests/" in o["Key"]]) == 3
    manifest_before = s3.get_object(Bucket=s3_bucket, Key=manifests[0]["Key"])["Body"].read()

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    version = client.get_model_version_by_alias("e2e-student", "challenger")
    assert version.version == "1"
    assert version.tags["kdflow.dataset_fingerprint"] == first.dataset_fingerprint
    assert version.tags["kdflow.softlabel_cache_key"] == first.cache_key
    assert len(version.tags["kdflow.teacher_digest"]) == 64
    assert version.tags["kdflow.pipeline_run"].startswith("kdflow-distill")
    from kdflow import __version__

    assert version.tags["kdflow.code_version"] == __version__

    # A retried registration step (its pod lost after MLflow answered) makes no second version.
    from kdflow.steps.register import run_registration

    again = run_registration(first.run_id, version.source, args["config"], mlflow_server)
    assert again["version"] == "1"
    assert [v.version for v in client.search_model_versions("name='e2e-student'")] == ["1"]

    # No training pixels in the registry: the stored input example is synthetic.
    from mlflow.models import Model

    from kdflow.registry.tracking import synthetic_example

    local = mlflow.artifacts.download_artifacts(artifact_uri="models:/e2e-student/1", dst_path=str(tmp_path / "m"))
    stored = Model.load(local).load_input_example(local)
    assert np.array_equal(np.asarray(stored, dtype=np.float32), synthetic_example(3, 12, 12).numpy())
    run = client.get_run(first.run_id)
    assert run.data.params["distill.method"] == "kd" and run.data.params["distill.options.temperature"] == "4.0"
    assert "train_loss" in run.data.metrics and "val_accuracy" in run.data.metrics
    assert len(client.get_metric_history(first.run_id, "train_loss")) == 8  # one point per epoch

    # The registered model loads by alias, has a signature, and classifies [0, 1] pixels.
    uri = "models:/e2e-student@challenger"
    assert get_model_info(uri).signature is not None
    model = mlflow.pytorch.load_model(uri)
    import torch

    logits = model(torch.rand(5, 3, 12, 12))
    assert logits.shape == (5, 3) and np.isfinite(logits.detach().numpy()).all()

    # The registered student can itself be a teacher: models:/ URI, normalisation built in (the
    # defaults passed here must be ignored, or the input would be normalised twice).
    from kdflow.models.loading import TeacherSource, load_checkpoint

    source = TeacherSource(uri)
    as_teacher = source.load(default_mean=(0.9,) * 3, default_std=(9.0,) * 3)
    trained, _ = load_checkpoint(next((tmp_path / "root").rglob("student.pt")).read_bytes())
    x = torch.rand(4, 3, 12, 12)
    assert torch.allclose(as_teacher(x), trained.eval()(x), atol=1e-4)
    assert len(source.digest()) == 64

    second = read_summary(run_local(str(tmp_path / "root"), args), mlflow_server)
    assert second.cache_hit and second.cache_key == first.cache_key
    assert s3.get_object(Bucket=s3_bucket, Key=manifests[0]["Key"])["Body"].read() == manifest_before
    assert second.registered_version == "2"
    assert client.get_model_version_by_alias("e2e-student", "challenger").version == "2"

    # A scheduled run (skip_unchanged) on the same data, teacher and config as the champion stops
    # after preprocessing and says why: no MLflow run, no model version.
    version = client.get_model_version("e2e-student", "2")
    assert {"kdflow.config_hash", "kdflow.teacher_input_digest"} <= set(version.tags)
    client.set_registered_model_alias("e2e-student", "champion", "2")  # what promotion does
    runs_before = len(client.search_runs([run.info.experiment_id]))
    third = run_local(str(tmp_path / "root"), {**args, "skip_unchanged": True})
    assert third.startswith("unchanged: nothing changed since e2e-student version 2 (@champion)")
    assert len(client.search_runs([run.info.experiment_id])) == runs_before
    assert sorted(v.version for v in client.search_model_versions("name='e2e-student'")) == ["1", "2"]
