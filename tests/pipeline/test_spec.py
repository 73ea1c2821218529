"""The compiled pipeline spec: what a cluster receives."""

import subprocess
import sys

import pytest
import yaml

from kdflow import __version__
from kdflow.pipelines.local import compile_pipeline, retarget_images

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    compile_pipeline(str(path))
    return next(yaml.safe_load_all(path.read_text()))  # the second document: Kubernetes settings


def _executor(spec, name):
    return spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def _branch(spec, name):
    return spec["components"][f"comp-{name}"]["dag"]["tasks"]


def test_the_steps_in_order(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"fingerprint-inputs", "preprocess", "check-champion", "condition-branches-1"}
    assert tasks["preprocess"]["dependentTasks"] == ["fingerprint-inputs"]
    assert set(tasks["check-champion"]["dependentTasks"]) == {"fingerprint-inputs", "preprocess"}
    branches = _branch(spec, "condition-branches-1")
    assert set(branches) == {"condition-3", "condition-4"}
    trained = _branch(spec, "condition-3")
    assert set(trained) == {"adapt-teacher", "teacher-inference", "distill", "evaluate", "condition-2"}
    # Teacher inference labels with whatever teacher adaptation hands on (the given one when off).
    assert trained["teacher-inference"]["dependentTasks"] == ["adapt-teacher"]
    teacher_in = trained["teacher-inference"]["inputs"]["parameters"]["teacher_uri"]
    assert teacher_in["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "adapt-teacher"}
    assert trained["distill"]["dependentTasks"] == ["teacher-inference"]
    assert set(trained["evaluate"]["dependentTasks"]) == {"distill", "teacher-inference"}
    assert list(_branch(spec, "condition-2")) == ["register"]
    assert list(_branch(spec, "condition-4")) == ["stop-unchanged"]


def test_training_runs_only_when_inputs_changed(spec):
    branches = _branch(spec, "condition-branches-1")
    changed = branches["condition-3"]["triggerPolicy"]["condition"]
    assert changed == "inputs.parameter_values['pipelinechannel--check-champion-retrain'] == true"
    assert branches["condition-4"]["triggerPolicy"]["condition"] == f"!({changed})"


def test_registration_is_gated_on_evaluation(spec):
    cond = _branch(spec, "condition-3")["condition-2"]["triggerPolicy"]["condition"]
    assert cond == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"


def test_gpu_steps_request_an_nvidia_gpu_and_others_do_not(spec):
    for name in ("adapt-teacher", "teacher-inference", "distill"):
        acc = _executor(spec, name)["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    for name in ("fingerprint-inputs", "preprocess", "check-champion", "evaluate", "register", "stop-unchanged"):
        assert "accelerator" not in _executor(spec, name).get("resources", {})


def test_images_follow_the_package_version(spec):
    images = {n[len("exec-"):]: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()}
    gpu = {"adapt-teacher", "teacher-inference", "distill"}
    assert {n for n, image in images.items() if image == f"kdflow/kdflow-gpu:{__version__}"} == gpu
    assert {n for n, image in images.items() if image == f"kdflow/kdflow-cpu:{__version__}"} == set(images) - gpu


def test_components_do_not_install_kfp_at_start(spec):
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_few_primitive_pipeline_parameters(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in params.items()} == {
        "data_uri": "STRING", "teacher_uri": "STRING", "config": "STRING", "cache_uri": "STRING",
        "tracking_uri": "STRING", "skip_unchanged": "BOOLEAN", "auto_promote": "BOOLEAN"}
    assert params["tracking_uri"]["defaultValue"] == ""
    assert params["skip_unchanged"]["defaultValue"] is False
    assert params["auto_promote"]["defaultValue"] is False  # promotion is asked for, never implied


def test_compile_reads_no_environment(tmp_path):
    """The spec is the same whatever the compiling machine's environment says."""
    env_a = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": "http://a:5000", "AWS_ENDPOINT_URL": "http://a"}
    env_b = {"PATH": "/usr/bin:/bin", "KDFLOW_HOME": "/elsewhere"}
    outputs = []
    for i, env in enumerate((env_a, env_b)):
        out = tmp_path / f"{i}.yaml"
        subprocess.run([sys.executable, "-c", "from kdflow.cli import entrypoint; entrypoint()", "compile",
                        "-o", str(out)], check=True, env=env, capture_output=True)
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]


def test_image_prefix_retargets_every_executor(tmp_path):
    path = tmp_path / "p.yaml"
    compile_pipeline(str(path))
    retarget_images(str(path), "ghcr.io/acme/")
    spec = next(yaml.safe_load_all(path.read_text()))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/acme/kdflow-cpu:{__version__}", f"ghcr.io/acme/kdflow-gpu:{__version__}"}
