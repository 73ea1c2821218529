"""The Kubernetes settings in the compiled spec come from the platform file, and no credential does."""

import os

import pytest
import yaml

from kdflow import __version__
from kdflow.util.errors import ConfigError
from kdflow.pipelines.local import compile_pipeline
from kdflow.config.platform import Platform

pytestmark = pytest.mark.pipeline

GPU_STEPS = {"adapt-teacher", "teacher-plan", "teacher-part", "distill"}
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "platform.yaml")
# Credentials the compiling machine has, under the names the steps read: none may reach the spec.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIA-MARKER-1", "AWS_SECRET_ACCESS_KEY": "secret-marker-2",
               "MLFLOW_TRACKING_PASSWORD": "password-marker-3", "MLFLOW_TRACKING_TOKEN": "token-marker-4",
               "MLFLOW_TRACKING_URI": "http://user:uri-marker-5@mlflow:5000", "KF_PIPELINES_TOKEN": "kfp-marker-6"}


def _compile(tmp_path, platform_file=None, pipeline="distill"):
    path = tmp_path / f"{pipeline}.yaml"
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        compile_pipeline(str(path), pipeline, platform_file)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = path.read_text()
    spec, platform = yaml.safe_load_all(text)
    return text, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    return _compile(tmp_path_factory.mktemp("platform"), EXAMPLE)


def test_gpu_steps_get_node_selector_tolerations_shm_and_retries(example):
    _, spec, k8s = example
    for step in GPU_STEPS:
        cfg = k8s[f"exec-{step}"]
        assert cfg["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
        assert {t["key"] for t in cfg["tolerations"]} == {"nvidia.com/gpu", "cloud.google.com/gke-spot"}
        assert cfg["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi",
                                          "volumeName": "dshm"}]
        resources = spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == "1"
        assert resources["resourceCpuRequest"] == "8" and resources["resourceMemoryLimit"] == "64Gi"
    retried = _tasks_with(spec, "retryPolicy")
    assert set(retried) == GPU_STEPS
    assert retried["distill"] == {"maxRetryCount": 4, "backoffDuration": "120s", "backoffFactor": 2.0,
                                  "backoffMaxDuration": "3600s"}


def test_cpu_steps_stay_off_gpu_nodes_with_their_own_resources(example):
    _, spec, k8s = example
    for name, executor in spec["deploymentSpec"]["executors"].items():
        if name[len("exec-"):] in GPU_STEPS:
            continue
        assert "nodeSelector" not in k8s[name] and "tolerations" not in k8s[name]
        resources = executor["container"]["resources"]
        assert resources["resourceCpuLimit"] == "4" and resources["resourceMemoryRequest"] == "8Gi"


def test_every_step_gets_credentials_from_secrets_and_pulls_with_the_pull_secret(example):
    _, spec, k8s = example
    assert set(k8s) == set(spec["deploymentSpec"]["executors"])
    for cfg in k8s.values():
        env = {e["envVar"]: (s["secretName"], s["optional"]) for s in cfg["secretAsEnv"] for e in s["keyToEnv"]}
        assert env["AWS_SECRET_ACCESS_KEY"] == ("kdflow-s3", False)
        assert env["AWS_ENDPOINT_URL"] == ("kdflow-s3", True)
        assert env["MLFLOW_TRACKING_TOKEN"] == ("kdflow-mlflow", True)
        assert [p["secretName"] for p in cfg["imagePullSecret"]] == ["regcred"]


def test_no_credential_in_the_spec_or_its_parameters(example):
    text, spec, _ = example
    assert not [k for k, v in CREDENTIALS.items() if v.split("@")[0].split(":")[-1] in text]
    params = set(spec["root"]["inputDefinitions"]["parameters"])
    assert not {p for p in params if any(w in p for w in ("secret", "password", "token", "key"))}
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "env" not in executor["container"]  # nothing set inline: only from secrets


def test_images_are_pinned_to_the_package_version(example):
    _, spec, _ = example
    for executor in spec["deploymentSpec"]["executors"].values():
        image = executor["container"]["image"]
        assert image.endswith(f":{__version__}") and "latest" not in image


def test_only_content_keyed_steps_cache(example):
    """The preprocess assembly and teacher adaptation cache, keyed by content digests as parameters.
    The preprocess plan lists the folder; a part keeps its own complete spool (a cached part whose
    spool expired would fail the assembly forever); teacher inference relies on the soft-label
    cache's own content keys (a cached commit could point at an entry deleted since)."""
    _, spec, _ = example
    tasks = _all_tasks(spec)
    cached = {name for name, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"preprocess-assemble", "adapt-teacher"}
    source = tasks["preprocess-fanout"]["inputs"]["parameters"]["source_fingerprint"]["taskOutputParameter"]
    assert source == {"outputParameterKey": "source_fingerprint", "producerTask": "fingerprint-inputs"}
    for step in ("preprocess-part", "preprocess-assemble"):
        assert "source_fingerprint" in tasks[step]["inputs"]["parameters"]
    for step in ("adapt-teacher", "teacher-plan", "teacher-commit"):
        digest = tasks[step]["inputs"]["parameters"]["teacher_digest"]
        assert digest["componentInputParameter"] == "pipelinechannel--fingerprint-inputs-teacher_digest"


def test_defaults_without_a_platform_file(tmp_path):
    _, spec, k8s = _compile(tmp_path)
    defaults = Platform()
    assert k8s["exec-distill"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert k8s["exec-distill"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                   "effect": "NoSchedule"}]
    assert k8s["exec-distill"]["emptyDirMounts"][0]["sizeLimit"] == defaults.shm_size
    assert "imagePullSecret" not in k8s["exec-distill"]


def test_the_sweep_pipeline_gets_the_same_settings(tmp_path):
    _, spec, k8s = _compile(tmp_path, EXAMPLE, "sweep")
    assert "nodeSelector" in k8s["exec-distill"] and "nodeSelector" not in k8s["exec-select-trial"]
    assert all("secretAsEnv" in cfg for cfg in k8s.values())


@pytest.mark.parametrize("text, key", [
    ("gpu_tolerence: []", "gpu_tolerence"),
    ("shm_size: lots", "shm_size"),
    ("gpu_steps: {memory_limit: 64GB}", "gpu_steps.memory_limit"),
    ("retry: {backoff: 60}", "retry.backoff"),
    ("secrets: [{secret: s3, env: {AWS_KEY: 'not a name'}}]", "secrets[0].env"),
])
def test_bad_platform_files_are_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "platform.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        Platform.load(path)
    assert key in err.value.problem


def _all_tasks(spec):
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def _tasks_with(spec, key):
    return {name: t[key] for name, t in _all_tasks(spec).items() if key in t}


def test_distill_gpus_ask_for_that_many_gpus_on_the_distillation_task_only(tmp_path):
    """``distill_gpus: 4`` (with ``train.processes: 4``): the student-distillation task asks for four
    GPUs and trains under torchrun; every other GPU task keeps ``gpus_per_step``."""
    platform = Platform.load(EXAMPLE)
    doc = yaml.safe_load(platform.to_yaml())
    doc["distill_gpus"] = 4
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(doc))
    _, spec, _ = _compile(tmp_path, str(path))
    counts = {name[len("exec-"):]: ex["container"]["resources"]["accelerator"]["resourceCount"]
              for name, ex in spec["deploymentSpec"]["executors"].items()
              if "accelerator" in ex["container"].get("resources", {})}
    assert counts.pop("distill") == "4"
    assert counts and set(counts.values()) == {"1"}


def test_distill_gpus_below_one_is_refused():
    with pytest.raises(ConfigError, match="distill_gpus"):
        Platform(distill_gpus=0)


def test_distill_nodes_submit_the_distillation_as_a_trainer_job(tmp_path):
    """``distill_nodes: 2``: the distillation task is the CPU pod that submits a TrainJob of 2 nodes x
    ``distill_gpus`` and waits; it asks for no GPU itself."""
    doc = yaml.safe_load(Platform.load(EXAMPLE).to_yaml())
    doc.update(distill_nodes=2, distill_gpus=8)
    path = tmp_path / "platform.yaml"
    path.write_text(yaml.safe_dump(doc))
    _, spec, _ = _compile(tmp_path, str(path))
    executors = spec["deploymentSpec"]["executors"]
    assert "exec-distill" not in executors
    job = executors["exec-distill-trainjob"]["container"]
    assert "accelerator" not in job.get("resources", {})
    task = next(t for t in _all_tasks(spec).values() if t["componentRef"]["name"] == "comp-distill-trainjob")
    params = task["inputs"]["parameters"]
    assert params["num_nodes"]["runtimeValue"]["constant"] == 2
    assert params["gpus_per_node"]["runtimeValue"]["constant"] == 8
    assert "distill_nodes: 2" in params["platform"]["runtimeValue"]["constant"]
