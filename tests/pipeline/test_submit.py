"""`kdflow submit` and `kdflow schedule` against tests/fake_kfp.py, a local HTTP server that stands in
for a Kubeflow Pipelines cluster: it answers the KFP v2beta1 REST endpoints kfp.Client calls and
records every request, so these tests assert what a real cluster would receive."""

from __future__ import annotations

import sys
from unittest import mock

import kfp.client
import pytest
import yaml

from kdflow.pipelines import local
from tests.fake_kfp import FakeKFP
from tests.helpers import closed_port

pytestmark = pytest.mark.pipeline

PREFIX = "registry.example.com/acme"  # where `make push REGISTRY=...` put the images
INPUTS = ["--data", "s3://bucket/flowers", "--teacher", "models:/teacher@champion", "--cache-uri", "s3://bucket/cache"]
URIS = [*INPUTS, "--image-prefix", PREFIX]
SECRET = "pw-7f3a91c2"  # a password in a URI: it must never be sent, nor said back


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    """A fake KFP; no token, endpoint or kfp context leaks in from the machine running the tests."""
    for var in ("KF_PIPELINES_TOKEN", "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT",
                "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KDFLOW_IMAGE_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(kfp.client, "KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-such-token"))
    monkeypatch.setattr(kfp.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    with FakeKFP() as fake:
        yield fake


REAL_COMPILE = local.compile_pipeline


class Compiles:
    """compile_pipeline as the CLI calls it, recorded; ``declare_skip`` False compiles a pipeline
    without the skip_unchanged parameter (one that predates it). Specs are compiled once per
    argument set (tests/pipeline/test_spec.py checks what compiling makes)."""

    _specs: dict = {}

    def __init__(self):
        self.calls, self.declare_skip = [], True

    def __call__(self, path, pipeline="distill", platform_file=None, image_prefix=None):
        self.calls.append({"pipeline": pipeline, "platform_file": platform_file, "image_prefix": image_prefix})
        key = (pipeline, platform_file and open(platform_file).read(), image_prefix, self.declare_skip)
        if key not in self._specs:
            REAL_COMPILE(path, pipeline, platform_file=platform_file, image_prefix=image_prefix)
            with open(path) as f:
                docs = list(yaml.safe_load_all(f))
            params = docs[0]["root"]["inputDefinitions"]["parameters"]
            if self.declare_skip:
                params.setdefault("skip_unchanged",
                                  {"defaultValue": False, "isOptional": True, "parameterType": "BOOLEAN"})
            else:  # a pipeline from before skip_unchanged, and so before auto_promote
                params.pop("skip_unchanged", None)
                params.pop("auto_promote", None)
            self._specs[key] = yaml.safe_dump_all(docs, sort_keys=False)
        with open(path, "w") as f:
            f.write(self._specs[key])
        return path


@pytest.fixture
def compiles(monkeypatch):
    recorder = Compiles()
    monkeypatch.setattr(local, "compile_pipeline", recorder)
    return recorder


def kdflow(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI entrypoint in-process: (exit status, stdout, stderr)."""
    from kdflow.cli import entrypoint

    with mock.patch.object(sys, "argv", ["kdflow", *args]):
        try:
            entrypoint()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _parameters(request) -> dict:
    return request.body["runtime_config"]["parameters"]


def test_submit_uploads_a_new_pipeline_and_starts_a_run_of_its_version(cluster, compiles, capsys):
    code, out, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, "--tracking-uri", "http://mlflow:5000")
    assert code == 0, err
    [upload] = cluster.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "kdflow-distill"
    filename, data = upload.body["files"]["uploadfile"]
    assert next(yaml.safe_load_all(data))["pipelineInfo"]["name"] == "kdflow-distill"
    assert not cluster.calls("POST", "/pipelines/upload_version")
    [pipeline_id] = cluster.pipelines
    [version] = cluster.versions[pipeline_id]
    [run] = cluster.calls("POST", "/runs")
    assert run.body["pipeline_version_reference"] == {"pipeline_id": pipeline_id,
                                                      "pipeline_version_id": version["pipeline_version_id"]}
    assert run.body["experiment_id"] in cluster.experiments
    params = _parameters(run)
    assert {k: params[k] for k in ("data_uri", "teacher_uri", "cache_uri", "tracking_uri", "skip_unchanged")} == {
        "data_uri": "s3://bucket/flowers", "teacher_uri": "models:/teacher@champion", "cache_uri": "s3://bucket/cache",
        "tracking_uri": "http://mlflow:5000", "skip_unchanged": False}
    config = yaml.safe_load(params["config"])
    assert config["data_uri"] == "s3://bucket/flowers" and config["distill"]["method"] == "kd"
    [run_id] = cluster.runs
    assert out == f"{cluster.url}/#/runs/details/{run_id}\n"  # stdout is the URL alone (kfp's chatter: stderr)
    assert compiles.calls == [{"pipeline": "distill", "platform_file": None, "image_prefix": PREFIX}]


def test_submit_to_an_existing_pipeline_uploads_a_new_version_and_runs_that(cluster, compiles, capsys):
    pipeline_id, old_version = cluster.add_pipeline("kdflow-distill")
    for _ in range(2):
        assert kdflow(capsys, "submit", "--host", cluster.url, *URIS)[0] == 0
    assert not cluster.calls("POST", "/pipelines/upload")
    uploads = cluster.calls("POST", "/pipelines/upload_version")
    assert [u.query["pipelineid"] for u in uploads] == [pipeline_id, pipeline_id]
    assert len({u.query["name"] for u in uploads}) == 2  # every upload is a version of its own
    new_versions = [v["pipeline_version_id"] for v in cluster.versions[pipeline_id][1:]]
    runs = cluster.calls("POST", "/runs")
    assert [r.body["pipeline_version_reference"]["pipeline_version_id"] for r in runs] == new_versions
    assert old_version not in new_versions
    assert len(cluster.experiments) == 1  # the second submit found the experiment the first one made


def test_run_parameters_come_from_the_config_file_and_flags_win(cluster, compiles, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KDFLOW_IMAGE_PREFIX", "ghcr.io/from-env")  # the images' prefix may come from the environment
    config = tmp_path / "run.yaml"
    config.write_text("data_uri: s3://bucket/from-config\nteacher_uri: s3://bucket/teacher.pt\n"
                      "cache_uri: s3://bucket/cache\ntracking_uri: https://mlflow.example.com\n"
                      "distill: {method: dkd}\n")
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, "--config", str(config),
                          "--data", "s3://bucket/flag", "--experiment", "nightly", "--skip-unchanged")
    assert code == 0, err
    [run] = cluster.calls("POST", "/runs")
    params = _parameters(run)
    assert params["data_uri"] == "s3://bucket/flag" and params["teacher_uri"] == "s3://bucket/teacher.pt"
    assert params["tracking_uri"] == "https://mlflow.example.com" and params["skip_unchanged"] is True
    assert yaml.safe_load(params["config"])["distill"]["method"] == "dkd"
    assert [e["display_name"] for e in cluster.experiments.values()] == ["nightly"]
    assert [c["image_prefix"] for c in compiles.calls] == ["ghcr.io/from-env"]


def test_platform_file_and_image_prefix_reach_the_uploaded_spec(cluster, compiles, capsys, tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text("image_pull_secrets: [regcred-for-test]\n")
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, "--platform", str(platform),
                          "--pipeline-name", "team-kd")
    assert code == 0, err
    assert compiles.calls == [{"pipeline": "distill", "platform_file": str(platform), "image_prefix": PREFIX}]
    [upload] = cluster.calls("POST", "/pipelines/upload")
    assert upload.query["name"] == "team-kd"
    data = upload.body["files"]["uploadfile"][1]
    images = [e["container"]["image"] for e in next(yaml.safe_load_all(data))["deploymentSpec"]["executors"].values()]
    assert images and all(i.startswith(PREFIX + "/") for i in images)
    assert b"regcred-for-test" in data


def test_schedule_creates_a_recurring_run_pinned_to_the_uploaded_version(cluster, compiles, capsys):
    pipeline_id, _ = cluster.add_pipeline("kdflow-distill")
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--cron", "0 0 3 * * *")
    assert code == 0, err
    [upload] = cluster.calls("POST", "/pipelines/upload_version")
    new_version = cluster.versions[pipeline_id][-1]["pipeline_version_id"]
    [job] = cluster.calls("POST", "/recurringruns")
    assert job.body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert int(job.body["max_concurrency"]) == 1 and job.body["no_catchup"] is True
    assert job.body["mode"] == "ENABLE"
    assert job.body["pipeline_version_reference"] == {"pipeline_id": pipeline_id, "pipeline_version_id": new_version}
    assert "pipeline_spec" not in job.body  # pinned by reference, not an inline copy
    assert _parameters(job)["skip_unchanged"] is True
    assert _parameters(job)["data_uri"] == "s3://bucket/flowers"
    [rid] = cluster.recurring_runs
    assert out == f"{cluster.url}/#/recurringrun/details/{rid}\n"
    assert "next runs (UTC)" in err and "03:00:00" in err
    assert not cluster.calls("POST", "/runs")


def test_schedule_always_retrain_turns_skip_unchanged_off(cluster, compiles, capsys):
    assert kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--cron", "@daily", "--always-retrain")[0] == 0
    [job] = cluster.calls("POST", "/recurringruns")
    assert _parameters(job)["skip_unchanged"] is False


def test_skip_unchanged_is_passed_only_when_the_pipeline_declares_it(cluster, compiles, capsys):
    compiles.declare_skip = False
    code, _, err = kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--cron", "0 30 2 * * mon")
    assert code == 0, err
    [job] = cluster.calls("POST", "/recurringruns")
    assert "skip_unchanged" not in _parameters(job)
    assert "no skip_unchanged parameter" in err


def test_auto_promote_reaches_the_run_and_is_off_by_default(cluster, compiles, capsys):
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS)
    assert code == 0, err
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, "--auto-promote")
    assert code == 0, err
    first, second = cluster.calls("POST", "/runs")
    assert _parameters(first)["auto_promote"] is False and _parameters(second)["auto_promote"] is True
    compiles.declare_skip = False  # an older pipeline: said, not silently dropped
    code, _, err = kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--cron", "@daily", "--auto-promote")
    assert code == 0 and "no auto_promote parameter: nothing is promoted automatically" in err


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_the_bearer_token_comes_from_each_source(cluster, compiles, capsys, monkeypatch, tmp_path, source):
    cluster.require_token = "s3cret-" + source
    args = ["submit", "--host", cluster.url, *URIS]
    if source == "flag":
        monkeypatch.setenv("KF_PIPELINES_TOKEN", "loses-to-the-flag")
        args += ["--token", cluster.require_token]
    elif source == "env":
        monkeypatch.setenv("KF_PIPELINES_TOKEN", cluster.require_token)
    else:  # the projected service-account token kfp reads in a pod, re-read on every request
        token_file = tmp_path / "token"
        token_file.write_text(cluster.require_token + "\n")
        monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    code, _, err = kdflow(capsys, *args)
    assert code == 0, err
    assert len(cluster.runs) == 1
    assert {r.auth for r in cluster.requests} == {f"Bearer {cluster.require_token}"}


def test_no_token_anywhere_sends_no_authorization_header(cluster, compiles, capsys):
    assert kdflow(capsys, "submit", "--host", cluster.url, *URIS)[0] == 0
    assert cluster.requests and all(r.auth is None for r in cluster.requests)


def test_a_refused_token_is_exit_2_naming_the_token_sources(cluster, compiles, capsys):
    cluster.require_token = "right"
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, "--token", "wrong")
    assert code == 2 and "HTTP 401" in err and "--token" in err
    assert not cluster.runs and not cluster.pipelines


def test_a_missing_service_account_token_file_is_refused_before_any_request(cluster, compiles, capsys, monkeypatch,
                                                                            tmp_path):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "missing"))
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS)
    assert code == 2 and "KF_PIPELINES_SA_TOKEN_PATH" in err
    assert cluster.requests == []


@pytest.mark.parametrize("states, status, said", [
    (["PENDING", "RUNNING", "SUCCEEDED"], 0, "SUCCEEDED"),
    (["RUNNING", "FAILED"], 1, "ended FAILED: task distill failed"),
    (["RUNNING", "CANCELING", "CANCELED"], 1, "ended CANCELED"),
])
def test_wait_follows_the_run_and_exits_with_its_status(cluster, compiles, capsys, states, status, said):
    cluster.run_states = states
    code, out, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, "--wait", "--poll-interval", "0.01")
    assert code == status, err
    assert said in err
    [run_id] = cluster.runs
    assert out.startswith(f"{cluster.url}/#/runs/details/{run_id}\n")
    assert len(cluster.calls("GET", f"/runs/{run_id}")) == len(states)


@pytest.mark.parametrize("cron, said", [
    ("0 3 * * *", '"0 0 3 * * *"'),  # five fields: refused with the six-field equivalent
    ("0 0 24 * * *", "hour field"),
    ("0 0 3 * * 7", "day-of-week"),
    ("*/0 * * * * *", "step"),
    ("0 0 0 30 2 *", "never fires"),
    ("0 0 3 * * * 2030", "7 fields"),
])
def test_bad_cron_is_refused_before_any_request(cluster, compiles, capsys, cron, said):
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--cron", cron)
    assert code == 2 and said in err and "fix:" in err
    assert cluster.requests == [] and out == ""


@pytest.mark.parametrize("flags, key", [
    (["--data", "/data/flowers"], "data_uri"),
    (["--data", "file:///data/flowers"], "data_uri"),
    (["--teacher", "/models/teacher.pt"], "teacher_uri"),
    (["--teacher", "file:///models/teacher.pt"], "teacher_uri"),
    (["--teacher", "https://example.com/teacher.pt"], "teacher_uri"),
    (["--cache-uri", ".kdflow/cache"], "cache_uri"),
    (["--tracking-uri", "sqlite:///mlflow.db"], "tracking_uri"),
])
def test_local_inputs_are_refused_before_any_request(cluster, compiles, capsys, flags, key):
    code, out, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, *flags)
    assert code == 2 and f"error: {key} " in err and "fix:" in err
    assert cluster.requests == [] and out == "" and compiles.calls == []
    if key == "teacher_uri":
        assert "models:/" in err and "runs:/" in err


def test_a_runs_uri_teacher_is_resolved_through_mlflow_like_a_models_uri(cluster, compiles, capsys):
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, "--teacher", "runs:/0123abcd/model")
    assert code == 0, err
    [run] = cluster.calls("POST", "/runs")
    assert _parameters(run)["teacher_uri"] == "runs:/0123abcd/model"


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "@daily"]])
@pytest.mark.parametrize("prefix", [[], ["--image-prefix", "kdflow"], ["--image-prefix", "docker.io/kdflow/"],
                                    ["--image-prefix", ""], ["--image-prefix", "kdflow/x"],
                                    ["--image-prefix", "docker.io/kdflow/x"]])
def test_the_unpublished_default_images_are_refused_before_anything_is_compiled_or_sent(cluster, compiles, capsys,
                                                                                      command, prefix):
    code, out, err = kdflow(capsys, *command, "--host", cluster.url, *INPUTS, *prefix)
    assert code == 2 and "kdflow/kdflow-cpu" in err and "Docker Hub" in err
    assert "make images && make push REGISTRY=R" in err and "--image-prefix R" in err and "KDFLOW_IMAGE_PREFIX" in err
    assert cluster.requests == [] and compiles.calls == [] and out == ""


@pytest.mark.parametrize("flags, key, said", [
    (["--tracking-uri", f"http://alice:{SECRET}@mlflow:5000"], "tracking_uri", "MLFLOW_TRACKING_PASSWORD"),
    (["--tracking-uri", f"https://{SECRET}@mlflow.example.com"], "tracking_uri", "MLFLOW_TRACKING_TOKEN"),
    (["--data", f"s3://AKIAEXAMPLE:{SECRET}@bucket/flowers"], "data_uri", "AWS_SECRET_ACCESS_KEY"),
    (["--cache-uri", f"s3://key:{SECRET}@bucket/cache"], "cache_uri", "AWS_SECRET_ACCESS_KEY"),
    (["--teacher", f"s3://key:{SECRET}@bucket/teacher.pt"], "teacher_uri", "AWS_SECRET_ACCESS_KEY"),
])
def test_a_uri_with_a_credential_is_refused_without_saying_it(cluster, compiles, capsys, flags, key, said):
    code, out, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS, *flags)
    assert code == 2 and f"error: {key} " in err and "user name or password" in err
    assert said in err and "docs/cluster.md section 4" in err
    assert ("`kdflow-mlflow` Kubernetes secret" if key == "tracking_uri" else "`kdflow-s3` Kubernetes secret") in err
    assert SECRET not in out + err
    assert cluster.requests == [] and compiles.calls == []


def test_a_config_tracking_uri_with_a_credential_is_refused(cluster, compiles, capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"tracking_uri: http://alice:{SECRET}@mlflow:5000\n")
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--config", str(config),
                            "--cron", "@daily")
    assert code == 2 and "error: tracking_uri http://***@mlflow:5000 " in err
    assert "--tracking-uri http://mlflow:5000" in err and "MLFLOW_TRACKING_USERNAME" in err
    assert SECRET not in out + err and cluster.requests == [] and compiles.calls == []


@pytest.mark.parametrize("command", [["submit", *URIS], ["schedule", *URIS, "--cron", "@daily"], ["schedule", "list"]])
@pytest.mark.parametrize("from_env", [False, True])
def test_a_host_with_a_credential_is_refused_with_the_token_options(cluster, compiles, capsys, monkeypatch,
                                                                    command, from_env):
    host = cluster.url.replace("://", f"://admin:{SECRET}@")
    if from_env:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
        code, out, err = kdflow(capsys, *command)
    else:
        code, out, err = kdflow(capsys, command[0], "--host", host, *command[1:])
    assert code == 2 and "error: --host http://***@127.0.0.1:" in err and "user name or password" in err
    assert "--token" in err and "KF_PIPELINES_TOKEN" in err and f"--host {cluster.url}" in err
    assert SECRET not in out + err
    assert cluster.requests == [] and compiles.calls == []


def test_no_credential_of_this_machine_reaches_the_cluster(cluster, compiles, capsys, monkeypatch):
    markers = {var: f"marker-{n}-{var.lower()}" for n, var in enumerate(
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"))}
    for var, value in markers.items():
        monkeypatch.setenv(var, value)
    token = "marker-kfp-token-5e0d"
    monkeypatch.setenv("KF_PIPELINES_TOKEN", token)
    cluster.require_token = token
    said = ""
    for command in (["submit", "--tracking-uri", "http://mlflow:5000"], ["schedule", "--cron", "0 0 3 * * *"]):
        code, out, err = kdflow(capsys, *command, "--host", cluster.url, *URIS)
        assert code == 0, err
        said += out + err
    # the uploaded spec (as a new pipeline, then a new version), the run and the recurring run were all seen
    assert cluster.calls("POST", "/pipelines/upload") and cluster.calls("POST", "/pipelines/upload_version")
    assert cluster.calls("POST", "/runs") and cluster.calls("POST", "/recurringruns")
    found = [(r.method, r.path, where, value) for r in cluster.requests for where, text in r.parts().items()
             for value in (*markers.values(), token) if value in text]
    assert {where for *_, where, value in found if value == token} == {"header authorization"}
    assert [f for f in found if f[3] != token] == []
    assert all(r.auth == f"Bearer {token}" for r in cluster.requests)
    assert not [value for value in (*markers.values(), token) if value in said]


@pytest.mark.parametrize("ui, base", [
    ("https://kubeflow.example.com/pipeline/", "https://kubeflow.example.com/pipeline"),
    ("ui.example.com:8080", "http://ui.example.com:8080"),  # no scheme: http://, as kfp.Client does
])
def test_printed_urls_use_the_ui_endpoint_when_it_is_set(cluster, compiles, capsys, monkeypatch, ui, base):
    monkeypatch.setenv("KF_PIPELINES_UI_ENDPOINT", ui)
    code, out, err = kdflow(capsys, "submit", "--host", cluster.url, *URIS)
    assert code == 0, err
    [run_id] = cluster.runs
    assert out == f"{base}/#/runs/details/{run_id}\n"
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, *URIS, "--cron", "@daily")
    assert code == 0, err
    [rid] = cluster.recurring_runs
    assert out == f"{base}/#/recurringrun/details/{rid}\n"


def _caching(spec: bytes) -> dict:
    """Each task of each DAG of a compiled spec: its cachingOptions."""
    doc = next(yaml.safe_load_all(spec))
    dags = [doc["root"], *(c for c in doc["components"].values() if "dag" in c)]
    return {name: task.get("cachingOptions") for dag in dags for name, task in dag["dag"]["tasks"].items()}


@pytest.mark.parametrize("command, created, no_cache", [(["submit"], "/runs", False), (["submit"], "/runs", True),
                                                        (["schedule", "--cron", "@daily"], "/recurringruns", False)])
def test_no_cache_turns_caching_off_in_the_version_the_run_is_pinned_to(cluster, compiles, capsys, command, created,
                                                                       no_cache):
    code, _, err = kdflow(capsys, *command, "--host", cluster.url, *URIS, *(["--no-cache"] if no_cache else []))
    assert code == 0, err
    [upload] = cluster.calls("POST", "/pipelines/upload")
    caching = _caching(upload.body["files"]["uploadfile"][1])
    [pipeline_id] = cluster.pipelines
    [version] = cluster.versions[pipeline_id]
    [request] = cluster.calls("POST", created)
    assert request.body["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert "pipeline_spec" not in request.body  # the run takes its caching from the pinned version's spec
    if no_cache:
        # kfp's enable_caching=False rewrites only an inline spec: the uploaded one says it, in every DAG
        assert "teacher-part" in caching and all(c == {"enableCache": False} for c in caching.values())
        assert "step caching off" in err
    else:  # the compiled caching options, untouched
        assert caching["preprocess-assemble"] == caching["adapt-teacher"] == {"enableCache": True}
        assert caching["distill"] == caching["teacher-commit"] == {}


def test_a_schedule_refuses_no_cache_which_would_hold_for_every_run(cluster, compiles, capsys):
    code, _, err = kdflow(capsys, "schedule", "--cron", "@daily", "--host", cluster.url, *URIS, "--no-cache")
    assert code == 2 and "on a schedule it would turn KFP's step cache off for every future run" in err
    assert cluster.requests == [] and compiles.calls == []


@pytest.mark.parametrize("given", [["--config", "run.yaml"], ["--data", "s3://b/d"], ["--image-prefix", PREFIX],
                                   ["--no-cache"], ["--experiment", "Default"], ["--cron", "@daily"],
                                   ["--always-retrain"], ["--name", "nightly"]])
@pytest.mark.parametrize("subcommand", [["list"], ["delete", "some-id"]])
def test_schedule_subcommands_refuse_pipeline_options_given_before_them(cluster, capsys, given, subcommand):
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, *given, *subcommand)
    assert code == 2 and given[0] in err and f"kdflow schedule {subcommand[0]}" in err
    assert cluster.requests == [] and out == ""


def test_schedule_subcommands_take_connection_options_and_ignore_the_image_prefix_variable(cluster, capsys,
                                                                                         monkeypatch):
    monkeypatch.setenv("KDFLOW_IMAGE_PREFIX", PREFIX)  # from the environment, not given: no refusal
    rid = cluster.add_recurring_run("nightly", "0 0 3 * * *")
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, "--token", "t0k", "list")
    assert code == 0 and rid in out, err


def test_a_missing_data_uri_is_refused_with_the_flag_to_pass(cluster, compiles, capsys):
    code, _, err = kdflow(capsys, "schedule", "--host", cluster.url, "--teacher", "s3://b/t.pt",
                          "--cache-uri", "s3://b/c", "--image-prefix", PREFIX, "--cron", "@daily")
    assert code == 2 and "no data_uri" in err and "--data s3://" in err
    assert cluster.requests == []


def test_schedule_list_pages_through_every_recurring_run_and_delete_removes_one(cluster, capsys):
    ids = [cluster.add_recurring_run(f"nightly-{i}", f"0 0 {i} * * *") for i in range(3)]
    cluster.page_limit = 2  # the server caps pages: the list must follow next_page_token
    code, out, err = kdflow(capsys, "schedule", "--host", cluster.url, "list")  # --host before the subcommand
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "SCHEDULE", "VERSION", "NAME"]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert "0 0 2 * * *" in lines[3] and "ENABLED" in lines[3]
    assert len(cluster.calls("GET", "/recurringruns")) == 2

    assert kdflow(capsys, "schedule", "delete", ids[1], "--host", cluster.url)[0] == 0
    assert [r.path.rsplit("/", 1)[1] for r in cluster.calls("DELETE", "/recurringruns/*")] == [ids[1]]
    assert set(cluster.recurring_runs) == {ids[0], ids[2]}
    code, _, err = kdflow(capsys, "schedule", "delete", ids[1], "--host", cluster.url)
    assert code == 2 and "no recurring run" in err and "schedule list" in err


def test_schedule_without_cron_and_submit_without_an_http_host_are_refused(cluster, compiles, capsys):
    assert kdflow(capsys, "schedule", "--host", cluster.url, *URIS)[0] == 2
    assert kdflow(capsys, "submit", *URIS)[0] == 2
    code, _, err = kdflow(capsys, "submit", "--host", cluster.url.split("://")[1], *URIS)
    assert code == 2 and "http(s)://" in err
    assert cluster.requests == []


def test_an_unreachable_host_is_exit_2_with_the_fix(cluster, compiles, capsys):
    with closed_port() as port:
        code, _, err = kdflow(capsys, "submit", "--host", f"http://127.0.0.1:{port}", *URIS)
    assert code == 2 and "cannot reach Kubeflow Pipelines" in err and "--host" in err
