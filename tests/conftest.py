"""Shared fixtures: generated datasets, a teacher trained on them, and real S3 / MLflow servers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import free_port, make_image_folder

TINY_CONFIG = """
data: {image_size: 12, val_fraction: 0.15, test_fraction: 0.25, seed: 0}
teacher: {arch: convnet_s, bootstrap_epochs: 4, top_k: 10, batch_size: 64}
augment: {crop: pad, padding: 2, views: 2}
student: {arch: convnet_xs}
train: {epochs: 8, batch_size: 16, lr: 0.05, seed: 0}
distill: {method: kd, options: {temperature: 4.0, alpha: 0.9}}
gate: {min_accuracy: 0.0, max_drop: 1.0}
registry: {model_name: tiny-student, experiment: tiny}
evaluate: {export: [], latency_runs: 5, throughput_batch: 8, bootstrap: 200}  # the full set: test_evaluation_flow
"""


@pytest.fixture(autouse=True)
def _mlflow_environment_restored():
    """mlflow.set_tracking_uri/set_registry_uri also set MLFLOW_TRACKING_URI/MLFLOW_REGISTRY_URI in
    os.environ, which every later subprocess (every kfp.local task) inherits: a test's URIs must not
    reach the next test's pipeline steps."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_config_yaml() -> str:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "images")


@pytest.fixture(scope="session")
def tiny_teacher(tiny_data, tmp_path_factory) -> str:
    """A kdflow checkpoint of a teacher trained on ``tiny_data`` (by the bootstrap code)."""
    from kdflow.config import Config
    from kdflow.steps.bootstrap import bootstrap_teacher

    path, _ = bootstrap_teacher(str(tiny_data), Config.from_yaml(TINY_CONFIG),
                                str(tmp_path_factory.mktemp("teachers")))
    return path


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on loopback; environment set for boto3 and MLflow."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture()
def s3_bucket(s3_server, request):
    import boto3

    name = f"kdflow-{request.node.name.lower().replace('_', '-')[:40]}-{int(time.time() * 1000) % 100000}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real ``mlflow server`` process on loopback, storing artifacts in the S3 server."""
    import boto3

    boto3.client("s3").create_bucket(Bucket="mlflow-artifacts")
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", "s3://mlflow-artifacts/", "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
