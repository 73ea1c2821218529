"""The compiled pipeline spec: what a cluster receives."""

import subprocess
import sys

import pytest
import yaml

from kdflow import __version__
from pipelines.local import compile_pipeline, retarget_images

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "pipeline.yaml"
    compile_pipeline(str(path))
    return yaml.safe_load(path.read_text())


def _executor(spec, name):
    return spec["deploymentSpec"]["executors"][f"exec-{name}"]["container"]


def test_five_steps_in_order(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"preprocess", "adapt-teacher", "teacher-inference", "distill", "evaluate", "condition-1"}
    assert tasks["adapt-teacher"]["dependentTasks"] == ["preprocess"]
    # Teacher inference labels with whatever teacher adaptation hands on (the given one when off).
    assert set(tasks["teacher-inference"]["dependentTasks"]) == {"adapt-teacher", "preprocess"}
    teacher_in = tasks["teacher-inference"]["inputs"]["parameters"]["teacher_uri"]
    assert teacher_in["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "adapt-teacher"}
    assert set(tasks["distill"]["dependentTasks"]) == {"preprocess", "teacher-inference"}
    assert set(tasks["evaluate"]["dependentTasks"]) == {"distill", "preprocess", "teacher-inference"}
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert list(inner) == ["register"]


def test_registration_is_gated_on_evaluation(spec):
    cond = spec["root"]["dag"]["tasks"]["condition-1"]["triggerPolicy"]["condition"]
    assert cond == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"


def test_gpu_steps_request_an_nvidia_gpu_and_others_do_not(spec):
    for name in ("adapt-teacher", "teacher-inference", "distill"):
        acc = _executor(spec, name)["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    for name in ("preprocess", "evaluate", "register"):
        assert "accelerator" not in _executor(spec, name).get("resources", {})


def test_images_follow_the_package_version(spec):
    images = {n: _executor(spec, n)["image"] for n in ("preprocess", "teacher-inference", "distill",
                                                      "evaluate", "register")}
    assert images["distill"] == images["teacher-inference"] == f"kdflow/kdflow-gpu:{__version__}"
    assert images["preprocess"] == images["evaluate"] == images["register"] == f"kdflow/kdflow-cpu:{__version__}"


def test_components_do_not_install_kfp_at_start(spec):
    for executor in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(executor["container"]["command"])


def test_few_primitive_pipeline_parameters(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in params.items()} == {
        "data_uri": "STRING", "teacher_uri": "STRING", "config": "STRING", "cache_uri": "STRING",
        "tracking_uri": "STRING"}
    assert params["tracking_uri"]["defaultValue"] == ""


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
    spec = yaml.safe_load(path.read_text())
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/acme/kdflow-cpu:{__version__}", f"ghcr.io/acme/kdflow-gpu:{__version__}"}
