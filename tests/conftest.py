"""Shared fixtures: generated datasets, a teacher trained on them, and real S3 / MLflow servers."""

from __future__ import annotations

import getpass
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import Labelled, hang_guard, make_image_folder

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


KEEP_FINISHED_RUNS = 3  # the base temps of ended sessions kept for a look after a failure, as pytest keeps 3


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Each session gets its own base temp, ``<tmp>/kdflow-tests-<user>/run-<pid>-<random>``: pytest's
    default root, ``/tmp/pytest-of-<user>``, is shared by every session of the user, and a session
    cleaning it up can remove the folders of another one still running (several test runs at once in
    one checkout, or in two). An explicit --basetemp wins; xdist workers take theirs from the
    controller. The folders of sessions whose process has ended are removed here, the newest few kept."""
    if config.option.basetemp is not None or hasattr(config, "workerinput"):
        return
    root = Path(tempfile.gettempdir()) / f"kdflow-tests-{getpass.getuser()}"
    root.mkdir(mode=0o700, exist_ok=True)
    ended = []
    for run in root.glob("run-*"):
        pid = run.name.split("-")[1]
        if pid.isdigit() and not _alive(int(pid)):
            ended.append(run)
    for run in sorted(ended, key=lambda p: p.stat().st_mtime)[:-KEEP_FINISHED_RUNS or None]:
        shutil.rmtree(run, ignore_errors=True)
    config.option.basetemp = tempfile.mkdtemp(prefix=f"run-{os.getpid()}-", dir=root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


# The order test files start in. Under xdist (`make test`: --dist loadfile --no-loadscope-reorder) a
# worker takes the next file when it is nearly done with its own: the slowest tiers go first, so no long
# end-to-end file is left running alone at the end while the other worker idles. Within a tier the
# files keep their order; inside a file, the tests theirs (module fixtures rely on it).
TIER_ORDER = ("e2e", "faults", "component", "integration", "pipeline", "unit", "docker")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        parts = Path(str(item.fspath)).relative_to(Path(__file__).parent).parts
        return TIER_ORDER.index(parts[0]) if len(parts) > 1 and parts[0] in TIER_ORDER else len(TIER_ORDER)

    items.sort(key=rank)  # stable


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
    from kdflow.training.bootstrap import bootstrap_teacher

    path, _ = bootstrap_teacher(str(tiny_data), Config.from_yaml(TINY_CONFIG),
                                str(tmp_path_factory.mktemp("teachers")))
    return path


@pytest.fixture(scope="session")
def tiny_labelled(tiny_data, tiny_teacher, tmp_path_factory) -> Labelled:
    """``tiny_data`` preprocessed with TINY_CONFIG and labelled by ``tiny_teacher`` (its views, its k), once
    per session. Shared: read it, or take a ``copy_to`` before writing (distillation writes checkpoints
    beside the cache). Any config with TINY_CONFIG's data, teacher and augment sections reads the same
    dataset and the same cache entry."""
    from kdflow.config import Config
    from kdflow.data.preprocess import preprocess
    from kdflow.steps.teacher import run_teacher_inference

    root = tmp_path_factory.mktemp("labelled")
    labelled = Labelled(root / "ds", root / "cache", root / "ref")
    preprocess(str(tiny_data), str(labelled.dataset), Config.from_yaml(TINY_CONFIG).data)
    run_teacher_inference(str(labelled.dataset), tiny_teacher, TINY_CONFIG, str(labelled.cache), str(labelled.ref))
    return labelled


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on loopback; environment set for boto3 and MLflow."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: the OS picks a free one
    server.start()
    endpoint = "http://127.0.0.1:%d" % server.get_host_and_port()[1]
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
    log = open(root / "server.log", "w")
    # Port 0: the server binds a port the OS picks and says which (uvicorn's "running on" line), so no
    # other process can take it between a choice and the bind (a port found free, then closed, can).
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", "0",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", "s3://mlflow-artifacts/", "--workers", "1"],
        # No job runner: kdflow runs no server-side jobs, and it would start several more interpreters.
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    deadline = time.monotonic() + hang_guard(180)  # it starts in ~10 s on an idle machine
    url = None
    while True:
        if url is None:
            found = re.search(r"running on (http://127\.0\.0\.1:\d+)", (root / "server.log").read_text())
            url = found.group(1) if found else None
        if url is not None:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
        time.sleep(0.5)
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=hang_guard(20))
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
