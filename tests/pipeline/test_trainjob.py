"""The Kubeflow Trainer job for multi-node distillation: the spec it builds, and submission against a fake
Kubernetes API (no cluster here: what a real one does with the spec is in docs/cluster.md)."""

import json

import pytest
import yaml

from kdflow import __version__
from kdflow.util.errors import ConfigError
from kdflow.config.platform import Platform
from kdflow.cluster.trainjob import (CONFIG_ENV, JobFailed, JobInputs, JobTimeout, Kubectl, build_job, job_state,
                             submit_and_wait)

pytestmark = pytest.mark.pipeline

CONFIG = "train: {epochs: 2}\n"


def _inputs(**kw):
    base = dict(name="kd-run-1", namespace="ml", image=f"kdflow/kdflow-gpu:{__version__}",
                dataset_uri="s3://b/run/dataset", soft_labels_uri="s3://b/run/labels", out_uri="s3://b/run/model",
                config_yaml=CONFIG, tracking_uri="http://mlflow.ml:5000", num_nodes=4, gpus_per_node=8)
    return JobInputs(**{**base, **kw})


def _env(env):
    return {e["name"]: e for e in env}


def test_trainjob_spec_names_the_runtime_nodes_gpus_image_and_env():
    job = build_job(_inputs())
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == "kd-run-1" and job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["labels"]["app.kubernetes.io/version"] == __version__
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}
    t = spec["trainer"]
    assert t["numNodes"] == 4 and t["numProcPerNode"] == 8
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert t["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == "8"
    assert t["resourcesPerNode"]["limits"]["memory"] == Platform().gpu_steps.memory_limit
    assert t["image"].endswith(f":{__version__}")
    assert t["command"] == ["torchrun"]
    assert t["args"][:2] == ["-m", "kdflow.steps.trainjob"]
    assert t["args"][t["args"].index("--dataset") + 1] == "s3://b/run/dataset"
    assert t["args"][t["args"].index("--out") + 1] == "s3://b/run/model"
    env = _env(t["env"])
    assert env[CONFIG_ENV]["value"] == CONFIG and yaml.safe_load(env[CONFIG_ENV]["value"]) == {"train": {"epochs": 2}}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.ml:5000"
    # Credentials only as secret references, never values.
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kdflow-s3",
                                                                         "key": "AWS_SECRET_ACCESS_KEY"}
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "value" not in env["AWS_SECRET_ACCESS_KEY"]
    json.dumps(job)  # plain JSON: what the API and kubectl take


def test_an_explicit_tracking_uri_wins_over_the_secret_and_none_leaves_the_secrets_variable():
    env = _env(build_job(_inputs())["spec"]["trainer"]["env"])
    assert "valueFrom" not in env["MLFLOW_TRACKING_URI"]
    env = _env(build_job(_inputs(tracking_uri=""))["spec"]["trainer"]["env"])
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["name"] == "kdflow-mlflow"


def test_pytorchjob_has_one_master_and_nodes_minus_one_workers_on_gpu_nodes():
    platform = Platform(gpu_resource="amd.com/gpu", image_pull_secrets=("regcred",))
    job = build_job(_inputs(kind="PyTorchJob"), platform)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    spec = job["spec"]
    assert spec["nprocPerNode"] == "8"
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 3
    pod = replicas["Worker"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "pytorch"  # the operator finds its container by this name
    assert container["image"].endswith(f":{__version__}")
    assert container["resources"]["limits"]["amd.com/gpu"] == "8"
    assert container["command"][:3] == ["torchrun", "-m", "kdflow.steps.trainjob"]
    assert _env(container["env"])[CONFIG_ENV]["value"] == CONFIG
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    single = build_job(_inputs(kind="PyTorchJob", num_nodes=1))["spec"]["pytorchReplicaSpecs"]
    assert set(single) == {"Master"}


@pytest.mark.parametrize("change, key", [({"name": "Bad_Name"}, "name"), ({"num_nodes": 0}, "num_nodes"),
                                         ({"gpus_per_node": 0}, "gpus_per_node"), ({"kind": "TFJob"}, "kind"),
                                         ({"dataset_uri": "/tmp/local/dataset"}, "dataset_uri"),
                                         ({"image": ""}, "image")])
def test_bad_inputs_are_config_errors_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        _inputs(**change)


class FakeApi:
    """CustomObjectsApi's three methods; ``states`` are the status conditions returned poll after poll."""

    def __init__(self, states, on_create=None):
        self.states, self.on_create = list(states), on_create
        self.created, self.deleted, self.gets = [], [], 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self.created.append((group, version, namespace, plural, body))
        if self.on_create:
            self.on_create(body)
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        conditions = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"metadata": {"name": name}, "status": {"conditions": conditions}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append((plural, name))
        return {}


class Clock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


RUNNING = [{"type": "Created", "status": "True"}]


class Status(Exception):
    """What the kubernetes client raises: an error with the HTTP ``status``."""

    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.status = status


class ExistingJobApi(FakeApi):
    """The job is already there (a retried task): create answers 409 once; after a delete, get
    answers 404 until the job is created again."""

    def __init__(self, states):
        super().__init__(states)
        self.exists = True

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        if self.exists:
            raise Status(409)
        self.exists = True
        return super().create_namespaced_custom_object(group, version, namespace, plural, body)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if not self.exists:
            raise Status(404)
        return super().get_namespaced_custom_object(group, version, namespace, plural, name)

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.exists = False
        return super().delete_namespaced_custom_object(group, version, namespace, plural, name)


def test_a_retried_task_waits_for_its_running_job_and_replaces_a_failed_one():
    done = [*RUNNING, {"type": "Complete", "status": "True"}]
    api, clock = ExistingJobApi([RUNNING, done]), Clock()
    submit_and_wait(build_job(_inputs()), api, timeout_s=600, poll_s=10, sleep=clock.sleep, clock=clock)
    assert not api.created and not api.deleted  # the running job was adopted, not submitted twice
    failed = [*RUNNING, {"type": "Failed", "status": "True", "message": "preempted"}]
    api, clock = ExistingJobApi([failed, done]), Clock()
    submit_and_wait(build_job(_inputs()), api, timeout_s=600, poll_s=10, sleep=clock.sleep, clock=clock)
    assert api.deleted == [("trainjobs", "kd-run-1")] and len(api.created) == 1  # replaced
    api = ExistingJobApi([RUNNING])
    api.create_namespaced_custom_object = lambda *a: (_ for _ in ()).throw(Status(403))
    with pytest.raises(Status):  # anything but "already exists" is the caller's error
        submit_and_wait(build_job(_inputs()), api, timeout_s=600, poll_s=10, sleep=Clock().sleep, clock=Clock())


def test_submission_polls_until_the_trainjob_completes():
    api, clock = FakeApi([RUNNING, RUNNING, [*RUNNING, {"type": "Complete", "status": "True"}]]), Clock()
    submit_and_wait(build_job(_inputs()), api, timeout_s=600, poll_s=10, sleep=clock.sleep, clock=clock)
    group, version, namespace, plural, body = api.created[0]
    assert (group, version, namespace, plural) == ("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs")
    assert body["metadata"]["name"] == "kd-run-1" and api.gets == 3 and clock.sleeps == [10, 10]
    assert not api.deleted


def test_a_failed_job_surfaces_its_message():
    failed = [*RUNNING, {"type": "Failed", "status": "True", "reason": "JobFailed",
                         "message": "jobset failed: node-0 exited with code 1 (CUDA out of memory)"}]
    api, clock = FakeApi([RUNNING, failed]), Clock()
    with pytest.raises(JobFailed, match="CUDA out of memory") as err:
        submit_and_wait(build_job(_inputs()), api, poll_s=1, sleep=clock.sleep, clock=clock)
    assert "kubectl logs -n ml" in err.value.fix


def test_pytorchjob_success_and_failure_use_its_own_condition_types():
    job = build_job(_inputs(kind="PyTorchJob"))
    assert job_state({"status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}, "PyTorchJob")[0] \
        == "succeeded"
    # "Complete" is the TrainJob's word: on a PyTorchJob it decides nothing; a False condition neither.
    assert job_state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}, "PyTorchJob")[0] \
        == "running"
    assert job_state({"status": {"conditions": [{"type": "Failed", "status": "False"}]}}, "TrainJob")[0] == "running"
    api, clock = FakeApi([[{"type": "Failed", "status": "True", "message": "worker-2 OOMKilled"}]]), Clock()
    with pytest.raises(JobFailed, match="OOMKilled"):
        submit_and_wait(job, api, poll_s=1, sleep=clock.sleep, clock=clock)
    assert api.created[0][3] == "pytorchjobs"


def test_a_job_that_outlasts_the_timeout_is_deleted_and_reported():
    api, clock = FakeApi([RUNNING]), Clock()
    with pytest.raises(JobTimeout, match="did not finish within 60 s .deleted."):
        submit_and_wait(build_job(_inputs()), api, timeout_s=60, poll_s=25, sleep=clock.sleep, clock=clock)
    assert api.deleted == [("trainjobs", "kd-run-1")] and clock.now >= 60
    api, clock = FakeApi([RUNNING]), Clock()
    with pytest.raises(JobTimeout, match="left running"):
        submit_and_wait(build_job(_inputs()), api, timeout_s=10, poll_s=5, delete_on_timeout=False,
                        sleep=clock.sleep, clock=clock)
    assert not api.deleted


def test_the_step_submits_waits_and_reads_back_rank_zeros_result(tmp_path):
    from kdflow.steps import trainjob as step

    out = f"file://{tmp_path}/model"

    def rank_zero_finishes(body):  # what the job's rank 0 writes at its end
        (tmp_path / "model").mkdir()
        (tmp_path / "model" / step.RESULT_FILE).write_text(json.dumps({"run_id": "r1", "model_uri": "runs:/r1/m"}))

    api = FakeApi([[{"type": "Complete", "status": "True"}]], on_create=rank_zero_finishes)
    result = step.run_trainjob(
        step.JobData(dataset_uri="s3://b/d", soft_labels_uri="s3://b/l", config_yaml=CONFIG, out_uri=out),
        step.JobPlacement(image=f"kdflow/kdflow-gpu:{__version__}", namespace="ml", num_nodes=2, gpus_per_node=4,
                          platform_yaml="gpu_resource: nvidia.com/gpu\ngpus_per_step: 1\n"),
        step.JobRun(pipeline_run_id="uuid-7"), api=api)
    body = api.created[0][4]
    assert result == {"run_id": "r1", "model_uri": "runs:/r1/m", "job": f"TrainJob/ml/{body['metadata']['name']}"}
    # The workers scope their checkpoints by the pipeline run's unique id (kdflow.steps.distill).
    assert {"name": step.RUN_ID_ENV, "value": "uuid-7"} in body["spec"]["trainer"]["env"]
    assert body["metadata"]["name"].startswith("kdflow-distill-") and len(body["metadata"]["name"]) <= 63
    assert body["spec"]["trainer"]["numNodes"] == 2
    # A job that "succeeds" without rank 0's file is not taken for a trained model.
    api = FakeApi([[{"type": "Complete", "status": "True"}]])
    with pytest.raises(Exception, match="wrote no"):
        step.run_trainjob(step.JobData(dataset_uri="s3://b/d", soft_labels_uri="s3://b/l", config_yaml=CONFIG,
                                       out_uri=f"file://{tmp_path}/other"),
                          step.JobPlacement(image="img:1", namespace="ml"), api=api)


def test_the_node_entry_runs_distillation_with_the_env_config_and_a_fetched_reference(tmp_path, monkeypatch):
    from kdflow.softlabels.ref import REF_FILE
    from kdflow.steps import distill, trainjob as step

    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / REF_FILE).write_text('{"cache_key": "k"}')
    calls = []

    def fake_distillation(dataset, soft_labels, config, out, tracking_uri, pipeline_run="", teacher_input_digest="",
                          pipeline_run_id=""):
        calls.append((dataset, soft_labels, config, out, tracking_uri, pipeline_run, teacher_input_digest,
                      pipeline_run_id))
        assert json.loads((tmp_path.joinpath(soft_labels) / REF_FILE).read_text()) == {"cache_key": "k"}
        return {"run_id": "r9", "model_uri": "runs:/r9/model"}

    monkeypatch.setattr(distill, "run_distillation", fake_distillation)
    monkeypatch.setenv(CONFIG_ENV, CONFIG)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv(step.RUN_ID_ENV, "uuid-7")  # what run_trainjob puts in the job's env
    out = tmp_path / "model"
    assert step.main(["--dataset", "s3://b/d", "--soft-labels", f"file://{tmp_path}/labels", "--out", str(out),
                      "--pipeline-run", "run-7", "--teacher-digest", "abc123"]) == 0
    (dataset, soft_labels, config, _, tracking, run, teacher_digest, run_id) = calls[0]
    assert dataset == "s3://b/d" and "://" not in soft_labels and config == CONFIG
    assert tracking == "http://mlflow:5000" and run == "run-7" and teacher_digest == "abc123" and run_id == "uuid-7"
    assert json.loads((out / step.RESULT_FILE).read_text()) == {"run_id": "r9", "model_uri": "runs:/r9/model"}
    monkeypatch.setenv("RANK", "1")  # other ranks write nothing
    (out / step.RESULT_FILE).unlink()
    step.main(["--dataset", "s3://b/d", "--soft-labels", str(tmp_path / "labels"), "--out", str(out)])
    assert not (out / step.RESULT_FILE).exists()


def test_kubectl_fallback_passes_the_job_on_stdin(monkeypatch):
    import subprocess

    seen = []

    def fake_run(cmd, input=None, capture_output=True, text=True):
        seen.append((cmd, input))
        return subprocess.CompletedProcess(cmd, 0, stdout='{"kind": "TrainJob"}', stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    job = build_job(_inputs())
    Kubectl().create_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs", job)
    Kubectl().get_namespaced_custom_object("trainer.kubeflow.org", "v1alpha1", "ml", "trainjobs", "kd-run-1")
    assert seen[0][0][:2] == ["kubectl", "create"] and json.loads(seen[0][1]) == job
    assert seen[1][0][:3] == ["kubectl", "get", "trainjobs.trainer.kubeflow.org"]


def test_the_component_defaults_to_the_gpu_image_of_this_version(tmp_path):
    from kfp import compiler

    from kdflow.components.distill_trainjob import distill_trainjob
    from kdflow.components.images import CPU_IMAGE, GPU_IMAGE

    path = tmp_path / "component.yaml"
    compiler.Compiler().compile(distill_trainjob, str(path))
    spec = yaml.safe_load(path.read_text())
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["image"]["defaultValue"] == GPU_IMAGE and GPU_IMAGE.endswith(f":{__version__}")
    assert params["kind"]["defaultValue"] == "TrainJob"
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == CPU_IMAGE  # the submitting pod needs no GPU


def test_a_retried_task_adopts_the_job_of_its_preempted_attempt_and_takes_its_output(tmp_path):
    """A KFP retry gets a new output URI; the job is named by the pipeline run and the inputs, so the retry
    finds the job the lost attempt submitted (not a second job on the same checkpoints) and copies its output."""
    from kdflow.steps import trainjob as step

    first, retry = f"file://{tmp_path}/attempt-1", f"file://{tmp_path}/attempt-2"
    inputs = ("s3://b/d", "s3://b/l", CONFIG, "")
    assert step.job_name(first, "uuid-7", inputs) == step.job_name(retry, "uuid-7", inputs)
    assert step.job_name(first, "uuid-8", inputs) != step.job_name(first, "uuid-7", inputs)
    # The first attempt's job ran to the end and its rank 0 wrote under the first attempt's output.
    (tmp_path / "attempt-1").mkdir()
    (tmp_path / "attempt-1" / step.RESULT_FILE).write_text(json.dumps({"run_id": "r1", "model_uri": "runs:/r1/m"}))
    (tmp_path / "attempt-1" / "student.pt").write_bytes(b"weights")

    class AdoptedJob(ExistingJobApi):
        def get_namespaced_custom_object(self, group, version, namespace, plural, name):
            job = super().get_namespaced_custom_object(group, version, namespace, plural, name)
            return {**job, "spec": {"trainer": {"args": ["-m", "x", "--out", first]}}}

    api = AdoptedJob([[{"type": "Complete", "status": "True"}]])
    data = step.JobData(dataset_uri=inputs[0], soft_labels_uri=inputs[1], config_yaml=inputs[2], out_uri=retry)
    result = step.run_trainjob(data, step.JobPlacement(image="img:1", namespace="ml"),
                               step.JobRun(pipeline_run_id="uuid-7"), api=api)
    assert api.created == [] and api.deleted == []  # waited for the existing job: nothing submitted
    assert result["run_id"] == "r1"
    assert (tmp_path / "attempt-2" / "student.pt").read_bytes() == b"weights"
