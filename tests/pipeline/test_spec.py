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


def _named(tasks, display):
    """The name of the one condition task shown as ``display`` (KFP numbers conditions as it builds)."""
    (name,) = [n for n, t in tasks.items() if t["taskInfo"]["name"] == display]
    return name


def _trained(spec):
    branches = _branch(spec, "condition-branches-1")
    return _branch(spec, _named(branches, "inputs-changed"))


def _loop(tasks):
    (name,) = [n for n, t in tasks.items() if "parameterIterator" in t]
    return name, tasks[name]


GPU_STEPS = {"adapt-teacher", "teacher-plan", "teacher-part", "distill"}


def test_the_steps_in_order(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"fingerprint-inputs", "preprocess-fanout", "check-champion", "condition-branches-1"}
    assert tasks["preprocess-fanout"]["dependentTasks"] == ["fingerprint-inputs"]
    assert set(tasks["check-champion"]["dependentTasks"]) == {"fingerprint-inputs", "preprocess-fanout"}
    fingerprint = tasks["check-champion"]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"]
    assert fingerprint == {"outputParameterKey": "fingerprint", "producerTask": "preprocess-fanout"}
    branches = _branch(spec, "condition-branches-1")
    assert {t["taskInfo"]["name"] for t in branches.values()} == {"inputs-changed", "inputs-unchanged"}
    trained = _trained(spec)
    loop_name, _ = _loop(trained)
    gate = _named(trained, "gate-passed")
    assert set(trained) == {"adapt-teacher", "teacher-plan", loop_name, "teacher-commit", "distill", "evaluate", gate}
    # Teacher inference labels with whatever teacher adaptation hands on (the given one when off).
    for step in ("teacher-plan", "teacher-commit"):
        assert "adapt-teacher" in trained[step]["dependentTasks"]
        teacher_in = trained[step]["inputs"]["parameters"]["teacher_uri"]
        assert teacher_in["taskOutputParameter"] == {"outputParameterKey": "Output", "producerTask": "adapt-teacher"}
    assert trained["distill"]["dependentTasks"] == ["teacher-commit"]
    assert set(trained["evaluate"]["dependentTasks"]) == {"distill", "teacher-commit"}
    assert trained["distill"]["inputs"]["artifacts"]["soft_labels"]["taskOutputArtifact"] == {
        "outputArtifactKey": "soft_labels", "producerTask": "teacher-commit"}
    assert list(_branch(spec, gate)) == ["register"]
    unchanged = _named(branches, "inputs-unchanged")
    assert list(_branch(spec, unchanged)) == ["stop-unchanged"]


def test_preprocess_fans_out_over_the_plans_parts(spec):
    root = spec["root"]["dag"]["tasks"]["preprocess-fanout"]
    params = root["inputs"]["parameters"]
    assert params["work"] == {"componentInputParameter": "cache_uri"}  # a folder every part task reaches
    assert params["source_fingerprint"]["taskOutputParameter"]["producerTask"] == "fingerprint-inputs"
    tasks = spec["components"][root["componentRef"]["name"]]["dag"]["tasks"]
    loop_name, loop = _loop(tasks)
    assert set(tasks) == {"preprocess-plan", loop_name, "preprocess-assemble"}
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--preprocess-plan-Output"
    assert loop["dependentTasks"] == ["preprocess-plan"]
    assert tasks["preprocess-assemble"]["dependentTasks"] == [loop_name]  # after every part
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["preprocess-part"]
    part = inner["preprocess-part"]["inputs"]["parameters"]
    assert part["part"]["componentInputParameter"] == "pipelinechannel--preprocess-plan-Output-loop-item"
    # The fingerprint reaches the parts as the fan-out pipeline's input, not as another task's output.
    assert part["source_fingerprint"] == {"componentInputParameter": "pipelinechannel--source_fingerprint"}
    assert part["work"] == {"componentInputParameter": "pipelinechannel--work"}
    assert tasks["preprocess-assemble"]["inputs"]["parameters"]["work"] == {"componentInputParameter": "work"}


def test_teacher_inference_fans_out_then_commits(spec):
    trained = _trained(spec)
    loop_name, loop = _loop(trained)
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--teacher-plan-Output"
    assert loop["dependentTasks"] == ["teacher-plan"]
    assert loop_name in trained["teacher-commit"]["dependentTasks"]  # the commit runs after every part
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["teacher-part"]
    params = inner["teacher-part"]["inputs"]["parameters"]
    for name in ("part", "parts", "teacher_uri", "teacher_digest"):  # all from the plan's loop item
        assert params[name]["componentInputParameter"] == "pipelinechannel--teacher-plan-Output-loop-item"
        assert params[name]["parameterExpressionSelector"] == f'parseJson(string_value)["{name}"]'
    assert inner["teacher-part"]["inputs"]["artifacts"]["dataset"] == {
        "componentInputArtifact": "pipelinechannel--preprocess-fanout-dataset"}
    assert loop["iteratorPolicy"]["parallelismLimit"] >= 2


def test_training_runs_only_when_inputs_changed(spec):
    branches = _branch(spec, "condition-branches-1")
    changed = branches[_named(branches, "inputs-changed")]["triggerPolicy"]["condition"]
    assert changed == "inputs.parameter_values['pipelinechannel--check-champion-retrain'] == true"
    assert branches[_named(branches, "inputs-unchanged")]["triggerPolicy"]["condition"] == f"!({changed})"


def test_registration_is_gated_on_evaluation(spec):
    trained = _trained(spec)
    cond = trained[_named(trained, "gate-passed")]["triggerPolicy"]["condition"]
    assert cond == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"


def test_gpu_steps_request_an_nvidia_gpu_and_others_do_not(spec):
    for name in GPU_STEPS:
        acc = _executor(spec, name)["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    for name in ("fingerprint-inputs", "preprocess-plan", "preprocess-part", "preprocess-assemble", "check-champion",
                 "teacher-commit", "evaluate", "register", "stop-unchanged"):
        assert "accelerator" not in _executor(spec, name).get("resources", {})


def test_images_follow_the_package_version(spec):
    images = {n[len("exec-"):]: e["container"]["image"] for n, e in spec["deploymentSpec"]["executors"].items()}
    assert {n for n, image in images.items() if image == f"kdflow/kdflow-gpu:{__version__}"} == GPU_STEPS
    assert {n for n, image in images.items() if image == f"kdflow/kdflow-cpu:{__version__}"} == set(images) - GPU_STEPS


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
