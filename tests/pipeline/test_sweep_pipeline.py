"""The compiled sweep pipeline spec: one teacher run, a fan-out of trials, the winner evaluated and gated."""

import pytest
import yaml

from kdflow.pipelines.local import compile_sweep
from kdflow.pipelines.sweep_pipeline import CLUSTER_PARALLELISM, make_sweep_pipeline

pytestmark = pytest.mark.pipeline


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("spec") / "sweep.yaml"
    compile_sweep(str(path))
    return next(yaml.safe_load_all(path.read_text()))


def _body(spec):
    """The tasks inside the exit handler: every step but the exit task."""
    root = spec["root"]["dag"]["tasks"]
    (handler,) = [t for name, t in root.items() if name.startswith("exit-handler")]
    return spec["components"][handler["componentRef"]["name"]]["dag"]["tasks"]


def _inner(spec, task):
    return spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]


def _loop(spec, step="distill"):
    """The loop (name, task) whose body is ``step``: the trials (distill) or the teacher's parts."""
    loops = {name: t for name, t in _body(spec).items() if "parameterIterator" in t and step in _inner(spec, t)}
    assert len(loops) == 1
    return next(iter(loops.items()))


def _condition(tasks):
    (name,) = [n for n in tasks if n.startswith("condition-")]
    return name


def test_a_failed_sweep_is_closed_by_an_exit_task(spec):
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finish-sweep"}
    finish = root["finish-sweep"]
    assert finish["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"  # runs whatever happened
    assert finish["dependentTasks"] == ["exit-handler-1"]
    assert set(finish["inputs"]["parameters"]) == {"sweep_id", "pipeline_run", "tracking_uri", "status"}
    start = _body(spec)["start-sweep"]["inputs"]["parameters"]
    assert start["sweep_id"]["componentInputParameter"] == "pipelinechannel--sweep_id"  # the same id tags the parent


def test_teacher_labels_once_then_the_trials_fan_out(spec):
    tasks = _body(spec)
    loop_name, loop = _loop(spec)
    parts_name, parts = _loop(spec, "teacher-part")
    assert set(tasks) == {"fingerprint-inputs", "preprocess-fanout", "adapt-teacher", "teacher-plan", parts_name,
                          "teacher-commit", "start-sweep", loop_name, "select-trial", "evaluate", _condition(tasks)}
    # The teacher labels once, fanned out: plan -> parts -> commit.
    assert parts["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--teacher-plan-Output"
    assert "teacher-plan" in parts["dependentTasks"] and parts_name in tasks["teacher-commit"]["dependentTasks"]
    part = _inner(spec, parts)["teacher-part"]["inputs"]["parameters"]
    assert part["teacher_uri"]["parameterExpressionSelector"] == 'parseJson(string_value)["teacher_uri"]'
    # The trials loop iterates over start-sweep's items, after the commit.
    iterator = loop["parameterIterator"]
    assert iterator["items"]["inputParameter"] == "pipelinechannel--start-sweep-Output"
    assert set(loop["dependentTasks"]) == {"preprocess-fanout", "teacher-commit", "start-sweep"}
    assert "teacher-commit" in tasks["start-sweep"]["dependentTasks"]
    assert loop["iteratorPolicy"]["parallelismLimit"] == CLUSTER_PARALLELISM
    inner = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert list(inner) == ["distill"]
    params = inner["distill"]["inputs"]["parameters"]
    for name, field in (("config", "config"), ("parent_run_id", "parent_run_id"), ("run_name", "run_name")):
        assert params[name]["parameterExpressionSelector"] == f'parseJson(string_value)["{field}"]'
    artifacts = inner["distill"]["inputs"]["artifacts"]
    assert artifacts["soft_labels"]["componentInputArtifact"] == "pipelinechannel--teacher-commit-soft_labels"


def test_trials_request_a_gpu(spec):
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-distill", "exec-teacher-plan", "exec-teacher-part", "exec-adapt-teacher"):
        acc = executors[name]["container"]["resources"]["accelerator"]
        assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"
    for name in ("exec-start-sweep", "exec-select-trial", "exec-evaluate", "exec-register", "exec-teacher-commit",
                 "exec-preprocess-part"):
        assert "accelerator" not in executors[name]["container"].get("resources", {})


def test_select_consumes_the_collected_trials_and_feeds_evaluation_and_registration(spec):
    tasks = _body(spec)
    loop_name, _ = _loop(spec)
    select = tasks["select-trial"]["inputs"]
    assert select["artifacts"]["models"]["taskOutputArtifact"] == {
        "outputArtifactKey": "pipelinechannel--distill-model", "producerTask": loop_name}
    assert select["parameters"]["run_ids"]["taskOutputParameter"] == {
        "outputParameterKey": "pipelinechannel--distill-run_id", "producerTask": loop_name}
    assert spec["components"]["comp-select-trial"]["inputDefinitions"]["artifacts"]["models"]["isArtifactList"]
    evaluate = tasks["evaluate"]["inputs"]
    assert evaluate["artifacts"]["model"]["taskOutputArtifact"] == {"outputArtifactKey": "best",
                                                                   "producerTask": "select-trial"}
    for name in ("config", "run_id"):  # the winner is evaluated with ITS config
        assert evaluate["parameters"][name]["taskOutputParameter"]["producerTask"] == "select-trial"
    cond = tasks[_condition(tasks)]
    assert cond["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--evaluate-Output'] == true"
    register = spec["components"][cond["componentRef"]["name"]]["dag"]["tasks"]["register"]["inputs"]["parameters"]
    assert register["model_uri"]["componentInputParameter"] == "pipelinechannel--select-trial-model_uri"


def test_few_primitive_pipeline_parameters(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {k: v["parameterType"] for k, v in params.items()} == {
        "data_uri": "STRING", "teacher_uri": "STRING", "config": "STRING", "trials": "STRING",
        "cache_uri": "STRING", "tracking_uri": "STRING", "sweep_id": "STRING", "auto_promote": "BOOLEAN"}


def test_parallelism_is_a_construction_argument(tmp_path):
    from kfp import compiler

    path = tmp_path / "local.yaml"
    compiler.Compiler().compile(make_sweep_pipeline(1), package_path=str(path))
    _, loop = _loop(next(yaml.safe_load_all(path.read_text())))
    assert loop["iteratorPolicy"]["parallelismLimit"] == 1


def test_cli_compiles_the_sweep_pipeline(tmp_path):
    from click.testing import CliRunner

    from kdflow.cli import main

    out = tmp_path / "sweep.yaml"
    result = CliRunner().invoke(main, ["compile", "--pipeline", "sweep", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert next(yaml.safe_load_all(out.read_text()))["pipelineInfo"]["name"] == "kdflow-sweep"
