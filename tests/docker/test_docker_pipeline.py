"""The whole distill pipeline in the container images: kfp.local.DockerRunner runs every task in the
image its component names (components/images.py), against a real MLflow server and S3 API on
loopback (host networking). Here the GPU image is built on the CPU image as a stand-in base, so the
GPU steps run on CPU; everything else is what a cluster runs: the same images, kfp and kdflow from
the image (install_kfp_package=False: nothing is installed at start)."""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid

import boto3
import pytest

from kdflow.config import Config
from kdflow.pipelines.local import compile_pipeline, run_local
from kdflow.cli.summary import read_summary
from tests.helpers import ROOT, upload_folder

pytestmark = pytest.mark.docker

# The tasks that need a GPU on a cluster (they run in the GPU image).
GPU_TASKS = 3  # teacher adaptation, teacher inference, student distillation


def test_pipeline_runs_in_the_images(tmp_path, images, docker_client, tiny_data, tiny_teacher, tiny_config_yaml,
                                     mlflow_server, s3_bucket):
    from kfp import local
    from mlflow import MlflowClient

    # Data and teacher in object storage, as on a cluster: no task reads a path of this machine.
    root = tmp_path / "root"
    data = upload_folder(tiny_data, s3_bucket, "datasets/tiny")
    boto3.client("s3").upload_file(tiny_teacher, s3_bucket, "teachers/tiny.pt")
    teacher = f"s3://{s3_bucket}/teachers/tiny.pt"
    config = Config.from_yaml(tiny_config_yaml.replace("tiny-student", "docker-student")).to_yaml()
    cache_uri = f"s3://{s3_bucket}/softlabels-cache"
    args = {"data_uri": data, "teacher_uri": teacher, "config": config, "cache_uri": cache_uri,
            "tracking_uri": mlflow_server}

    # The S3 endpoint and credentials set by the s3_server fixture, passed on to the containers; they
    # run as this user so that what they write into the pipeline root is ours.
    env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                      "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    mark = uuid.uuid4().hex
    runner = local.DockerRunner(network_mode="host", environment=env, user=f"{os.getuid()}:{os.getgid()}",
                                labels={"kdflow.test": mark})
    since = int(time.time()) - 1
    run_id = run_local(str(root), args, runner=runner)

    # Every task ran in a container of one of the two images, and the GPU steps in the GPU image.
    events = docker_client.events(since=since, until=int(time.time()) + 1, decode=True,
                                  filters={"type": "container", "event": "start", "label": f"kdflow.test={mark}"})
    started = [e["Actor"]["Attributes"]["image"] for e in events]
    assert set(started) == {images["cpu"], images["gpu"]}, started
    assert started.count(images["gpu"]) == GPU_TASKS and len(started) >= GPU_TASKS + 4, started
    student_file = next(root.rglob("student.pt"))
    assert student_file.stat().st_uid == os.getuid()

    # Real results: the student's MLflow run with its metrics, the registered version, the cache in S3.
    summary = read_summary(run_id, mlflow_server)
    assert summary.gate_passed and not summary.cache_hit
    assert summary.registered_model == "docker-student" and summary.registered_version == "1"
    client = MlflowClient(mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "train_loss" in run.data.metrics and "val_accuracy" in run.data.metrics
    assert len(client.get_metric_history(run_id, "train_loss")) == 8  # one point per epoch
    version = client.get_model_version_by_alias("docker-student", "challenger")
    assert version.version == "1" and version.run_id == run_id
    assert version.tags["kdflow.softlabel_cache_key"] == summary.cache_key
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.endswith(f"/entries/{summary.cache_key}.json") for k in keys), keys

    # What the containers logged through the MLflow server's artifact proxy loads here.
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    model = mlflow.pytorch.load_model("models:/docker-student@challenger")
    assert model(torch.rand(2, 3, 12, 12)).shape == (2, 3)


def test_images_run_as_a_non_root_user_with_everything_installed(images, docker_client):
    """As a pod runs them: the image's own user, no network, kfp (the version pinned here) and kdflow
    importable by python3 (the interpreter the KFP lightweight-component command calls)."""
    from importlib.metadata import version

    from kdflow import __version__

    for ref in images.values():
        out = docker_client.containers.run(
            ref, ["sh", "-c", "id -u; python3 -c 'import kfp, kdflow.components, kdflow.pipelines, torch, mlflow; "
                              "print(kfp.__version__)'; kdflow --help | head -1"],
            network_disabled=True, remove=True).decode().split("\n")
        assert out[:2] == ["1000", version("kfp")] and out[2].startswith("Usage:"), out
        assert docker_client.images.get(ref).labels["org.opencontainers.image.version"] == __version__
        assert ref.endswith(":" + __version__)


def test_make_push_names_what_compile_writes(tmp_path):
    """`make push REGISTRY=R` pushes exactly the images that `kdflow compile --image-prefix R` names,
    with the version's tag (never latest). Needs no Docker: make only prints the commands."""
    import yaml

    registry = "registry.example.com/ml"
    out = subprocess.run(["make", "--no-print-directory", "-n", "push", f"REGISTRY={registry}", "DOCKER=docker"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    pushed = set(re.findall(r"^docker push (\S+)$", out, flags=re.M))
    with open(compile_pipeline(str(tmp_path / "p.yaml"), image_prefix=registry)) as f:
        spec = next(yaml.safe_load_all(f))  # the pipeline spec; a platform spec may follow
    named = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert pushed == named and len(named) == 2, (pushed, named)
    assert not any(ref.endswith(":latest") or ":" not in ref.rsplit("/", 1)[-1] for ref in named)
