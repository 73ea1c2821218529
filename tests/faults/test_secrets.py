"""Secrets never leak: a recognisable secret is planted in the environment, in a URI's user-info or
token query, and next to a Kubernetes secret reference, and every output is searched for it: the
files a run writes (kfp.local outputs, the MLflow store and artifacts, the cache, the logs), the
command's stdout and stderr, MLflow params and tags, the compiled pipeline and its parameters.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from kdflow.config import Config
from kdflow.util.errors import ConfigError
from kdflow.util.redact import credential_uris, has_credentials, redact_text, redact_uri
from tests.helpers import cli_in_process, hang_guard, run_kdflow

SECRET = "KDFLOW-PLANTED-SECRET-7f3a"
# Every variable a secret reaches kdflow, MLflow, boto3 or kfp through (each a distinct value, so a
# leak names its source); all share SECRET as a prefix, which is what is searched for.
SECRET_ENV = {"AWS_SECRET_ACCESS_KEY": f"{SECRET}-aws", "AWS_SESSION_TOKEN": f"{SECRET}-session",
              "MLFLOW_TRACKING_PASSWORD": f"{SECRET}-mlflow-password", "MLFLOW_TRACKING_TOKEN": f"{SECRET}-token",
              "KF_PIPELINES_TOKEN": f"{SECRET}-kfp", "MLFLOW_TRACKING_USERNAME": "kdflow-user"}


kdflow = cli_in_process


def files_holding(root: Path, needle: str = SECRET) -> list[str]:
    """Every file below ``root`` whose bytes contain ``needle`` (binary files and databases too)."""
    raw = needle.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and raw in p.read_bytes()]


@pytest.mark.parametrize("uri, shown", [
    (f"http://alice:{SECRET}@127.0.0.1:5000", "http://***@127.0.0.1:5000"),
    (f"https://{SECRET}@mlflow.example.com/", "https://***@mlflow.example.com/"),
    (f"s3://bucket/teacher.pt?X-Amz-Credential=AKIA&X-Amz-Signature={SECRET}",
     "s3://bucket/teacher.pt?X-Amz-Credential=***&X-Amz-Signature=***"),
    (f"https://host/teacher.pt?token={SECRET}#frag", "https://host/teacher.pt?token=***#***"),
    (f"postgresql://mlflow:{SECRET}@db/mlflow", "postgresql://***@db/mlflow"),
    # Passwords holding an unencoded "/", "#" or "?" (AWS secret keys hold "/"; SQLAlchemy takes "#"
    # and "/"): urlsplit's netloc ends there, so the user-info is read on the raw text.
    (f"s3://AKIAX:wJalr/{SECRET}/K7MDENG+bPxR@bucket/images/", "s3://***@bucket/images/"),
    ("s3://AKIAX:wJalr/K7MDENG+bPxR@bucket/images/", "s3://***@bucket/images/"),
    (f"postgresql://mlflow:p#{SECRET}@db/mlflow", "postgresql://***@db/mlflow"),
    ("postgresql://mlflow:p#w@db/mlflow", "postgresql://***@db/mlflow"),
    (f"https://alice:pa?{SECRET}@h", "https://***@h"),
    ("https://alice:pa?ss@h", "https://***@h"),
    (f"https://u:p/{SECRET}@h:8443/t.pt?access_token={SECRET}#x", "https://***@h:8443/t.pt?access_token=***#***"),
    (f"https://h/x?sslpassword={SECRET}&sslkey=/etc/k.pem", "https://h/x?sslpassword=***&sslkey=***"),
    (f"https://h/x?api_key={SECRET}", "https://h/x?api_key=***"),
    (f"https://h/x?key={SECRET}", "https://h/x?key=***"),
    (f"https://acct.blob.core.windows.net/c/t.pt?sv=2024&sig={SECRET}",
     "https://acct.blob.core.windows.net/c/t.pt?sv=***&sig=***"),
    (f"https://h/x?user=u&pass={SECRET}", "https://h/x?user=***&pass=***"),
    (f"https://h/x?jwt={SECRET}", "https://h/x?jwt=***"),
], ids=["password", "bare-token", "presigned", "token-query", "database", "aws-key-slash", "aws-key-slash-review",
        "db-hash", "db-hash-review", "http-question", "http-question-review", "slash-and-query", "sslpassword",
        "api-key", "key", "azure-sas", "pass", "jwt"])
def test_a_uri_with_credentials_is_recognised_and_shown_redacted(uri, shown):
    assert has_credentials(uri) and redact_uri(uri) == shown and SECRET not in redact_uri(uri)
    assert credential_uris(f"tracking_uri: {uri}\ncache_uri: s3://b/c\n") == [shown]
    # In free text (a log line, an error message) the whole user-info goes: no part of the password stays.
    assert redact_text(f"cannot reach {uri} (retrying)") == f"cannot reach {shown} (retrying)"


@pytest.mark.parametrize("uri", ["s3://bucket/cache", "/data/images", "file:///data", "models:/teacher@champion",
                                 "sqlite:////tmp/mlflow.db", "http://mlflow:5000",
                                 # a ":" after a "/" is in the path, not a password: an object key
                                 "s3://bucket/dir:x/file@2x.png", "http://[::1]:5000/models",
                                 # query keys that merely contain a secret word's letters, or name no secret
                                 "https://h/x?design=1&keyspace=k&author=a&tokenizer=bert&monkey=1&auth_method=scram",
                                 "https://h/x?passive=1&bypass=0&compass=n",
                                 "postgresql://db/mlflow?sslkey=/etc/k.pem&sslmode=verify-full",
                                 "https://h/t.pt?AWSAccessKeyId=AKIAEXAMPLE&Expires=1",
                                 # a secret key with a blank value holds nothing to leak
                                 "https://h/t.pt?token=&signature="])
def test_a_uri_without_credentials_is_left_alone(uri):
    assert not has_credentials(uri) and redact_text(uri) == uri


def test_a_database_user_name_alone_is_accepted_but_not_shown():
    # Its password may come from the environment; the name is still nobody else's business.
    assert not has_credentials("postgresql://mlflow@db/x") and redact_text("postgresql://mlflow@db/x") == \
        "postgresql://***@db/x"


def test_a_local_run_with_secrets_in_its_environment_records_none_of_them(tmp_path, tiny_data, tiny_teacher,
                                                                           tiny_config_yaml):
    """The real local pipeline end to end (kfp.local, every step a process) with every credential
    variable set to a planted secret: no file it writes, no line it prints, no MLflow param or tag
    holds one."""
    from mlflow import MlflowClient

    config = tmp_path / "run.yaml"
    config.write_text(tiny_config_yaml)
    work = tmp_path / "work"
    done = run_kdflow("run", "--data", str(tiny_data), "--teacher", tiny_teacher, "--config", str(config),
                      "--workdir", str(work), cwd=tmp_path, env=SECRET_ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registered" in done.stdout and SECRET not in done.stdout + done.stderr

    written = {"pipeline outputs": work / "pipeline_runs", "MLflow store": work / "mlflow.db",
               "MLflow artifacts": work / "mlartifacts", "soft-label cache": work / "cache", "logs": work / "logs"}
    assert all(p.exists() for p in written.values()), {k: p.exists() for k, p in written.items()}
    assert list((work / "mlartifacts").rglob("MLmodel")) and list((work / "mlartifacts").rglob("config.yaml"))
    assert files_holding(tmp_path) == []  # everything the run wrote, the store's database file included

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        recorded = {**run.data.params, **run.data.tags}
        assert not [k for k, v in recorded.items() if SECRET in v], run.info.run_id
    for model in client.search_registered_models():
        assert SECRET not in str(model.tags)
        for version in client.search_model_versions(f"name='{model.name}'"):
            assert SECRET not in str(version.tags) + str(version.source)


@pytest.mark.parametrize("flag, uri", [
    ("--tracking-uri", f"http://user:{SECRET}@127.0.0.1:9"),
    ("--tracking-uri", f"https://{SECRET}@mlflow.example.com"),
    ("--cache-uri", f"s3://bucket/cache?X-Amz-Security-Token={SECRET}"),
    ("--teacher", f"https://models.example.com/teacher.pt?token={SECRET}"),
    ("--data", f"s3://AKIAEXAMPLE:{SECRET}@bucket/images/"),
    ("--data", f"s3://AKIAEXAMPLE:wJalr/{SECRET}@bucket/images/"),
    ("--tracking-uri", f"https://alice:pa?{SECRET}@mlflow.example.com"),
], ids=["tracking-password", "tracking-token", "cache-presigned", "teacher-token", "data-keys", "data-keys-slash",
        "tracking-password-question"])
def test_a_local_run_given_a_uri_with_credentials_is_refused_before_writing_anything(tmp_path, flag, uri):
    work = tmp_path / "work"
    ran = kdflow("run", flag, uri, "--workdir", str(work))
    assert ran.code == 2, ran.err
    assert "embeds credentials" in ran.err and "MLFLOW_TRACKING_PASSWORD" in ran.err and "fix:" in ran.err
    assert "***" in ran.err and SECRET not in ran.out + ran.err
    assert not work.exists()  # refused before the work folder (data, teacher, store) is made


def test_credentials_in_the_config_file_or_the_environment_uri_are_refused_too(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"tracking_uri: http://alice:{SECRET}@mlflow:5000\n")
    from_file = kdflow("run", "--config", str(config), "--workdir", str(tmp_path / "a"))
    assert from_file.code == 2 and "the config's tracking_uri http://***@mlflow:5000" in from_file.err
    from_env = kdflow("run", "--workdir", str(tmp_path / "b"),
                      env={"MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@mlflow:5000"})
    assert from_env.code == 2 and "$MLFLOW_TRACKING_URI http://***@mlflow:5000" in from_env.err
    for ran in (from_file, from_env):
        assert SECRET not in ran.out + ran.err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


CLUSTER = ("--host", "http://127.0.0.1:9", "--image-prefix", "ghcr.io/acme", "--data", "s3://b/images",
           "--teacher", "s3://b/teacher.pt", "--cache-uri", "s3://b/cache")


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "@daily"]])
@pytest.mark.parametrize("flag, uri", [
    ("--tracking-uri", f"http://user:{SECRET}@mlflow:5000"),
    ("--cache-uri", f"s3://b/cache?X-Amz-Signature={SECRET}"),
    ("--teacher", f"s3://key:{SECRET}@b/teacher.pt"),
], ids=["tracking-password", "cache-presigned", "teacher-keys"])
def test_submit_and_schedule_refuse_a_uri_with_credentials_before_anything_is_sent(command, flag, uri):
    # Port 9 (discard) has no KFP: had anything been sent, the error would be "cannot reach".
    ran = kdflow(*command, *CLUSTER, flag, uri)
    assert ran.code == 2 and "user name or password" in ran.err and "Kubernetes secret" in ran.err
    assert "cannot reach" not in ran.err and SECRET not in ran.out + ran.err


def test_submit_refuses_parameters_holding_a_secret_value_of_this_machine(tmp_path):
    """A secret of the environment pasted into the run config (which becomes the `config` parameter)."""
    config = tmp_path / "run.yaml"
    config.write_text(f"registry: {{experiment: {SECRET}-aws}}\n")
    ran = kdflow("submit", *CLUSTER, "--config", str(config), env={"AWS_SECRET_ACCESS_KEY": f"{SECRET}-aws"})
    assert ran.code == 2 and "pipeline parameter config would hold a secret value" in ran.err
    assert "cannot reach" not in ran.err and SECRET not in ran.out + ran.err


@pytest.mark.parametrize("command", [["registry", "m"], ["promote", "m", "1"], ["rollback", "m"]])
def test_registry_commands_refuse_a_tracking_uri_with_credentials(command):
    ran = kdflow(*command, "--tracking-uri", f"http://user:{SECRET}@127.0.0.1:9")
    assert ran.code == 2 and "--tracking-uri http://***@127.0.0.1:9 embeds credentials" in ran.err
    assert SECRET not in ran.out + ran.err


def test_steps_refuse_a_tracking_uri_parameter_with_credentials():
    """Defence in depth: a pipeline step given such a URI (a spec edited by hand) refuses it too."""
    from kdflow.registry.promotion import promote
    from kdflow.steps.champion import decide_retraining
    from kdflow.steps.register import run_registration

    uri = f"http://user:{SECRET}@127.0.0.1:9"
    calls = [lambda: run_registration("r", "runs:/r/model", "", uri),
             lambda: decide_retraining("f", "t", "", uri, skip_unchanged=True),
             lambda: promote("m", "1", uri)]
    for call in calls:
        with pytest.raises(ConfigError) as refused:
            call()
        assert "http://***@127.0.0.1:9" in str(refused.value) and SECRET not in str(refused.value)


def test_what_kdflow_records_and_logs_is_redacted(tmp_path, monkeypatch, capsys):
    """Past the entry points: the run config logged as params and config.yaml, run tags (TEACHER_URI)
    and log lines carry no credentials, and no secret value of the environment."""
    import mlflow

    from kdflow.registry import tracking
    from kdflow.util.logs import RedactingFormatter

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{SECRET}-aws")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use_tracking(uri)
    cfg = Config(teacher_uri=f"https://host/t.pt?token={SECRET}", cache_uri=f"s3://k:{SECRET}@b/cache",
                 tracking_uri=f"http://u:{SECRET}@mlflow:5000", data_uri="s3://b/images")
    with mlflow.start_run(experiment_id=tracking.experiment_id("secrets", uri)) as run:
        tracking.log_config(cfg)
        tracking.set_tags({"kdflow.teacher_uri": cfg.teacher_uri, "note": f"key {SECRET}-aws"})
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.params["teacher_uri"] == "https://host/t.pt?token=***"
    assert logged.params["cache_uri"] == "s3://***@b/cache" and logged.params["data_uri"] == "s3://b/images"
    assert logged.tags["kdflow.teacher_uri"] == "https://host/t.pt?token=***" and logged.tags["note"] == "key ***"
    assert files_holding(tmp_path) == []

    record = logging.LogRecord("kdflow.x", logging.ERROR, __file__, 1, "cannot reach %s (key %s)",
                               (cfg.tracking_uri, f"{SECRET}-aws"), None)
    line = RedactingFormatter("%(message)s").format(record)
    assert line == "cannot reach http://***@mlflow:5000 (key ***)"


def test_the_compiled_pipeline_names_kubernetes_secrets_and_never_holds_their_values(tmp_path, monkeypatch):
    """A platform file naming a secret and its keys, compiled with the planted secret also in the
    compiling process's environment: the spec references the secret by name and key, holds no value,
    and its pipeline parameters (root inputDefinitions defaults) hold none either."""
    for var, value in SECRET_ENV.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:{SECRET}@mlflow:5000")
    platform = tmp_path / "platform.yaml"
    platform.write_text(yaml.safe_dump({"secrets": [
        {"secret": "planted-s3", "env": {"access-key": "AWS_ACCESS_KEY_ID", "secret-key": "AWS_SECRET_ACCESS_KEY"}},
        {"secret": "planted-mlflow", "env": {"password": "MLFLOW_TRACKING_PASSWORD"}, "optional": True}]}))
    spec_path = tmp_path / "pipeline.yaml"
    ran = kdflow("compile", "--platform", str(platform), "-o", str(spec_path))
    assert ran.code == 0, ran.err
    text = spec_path.read_text()
    assert SECRET not in text and SECRET not in ran.out + ran.err
    docs = list(yaml.safe_load_all(text))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    refs = {(s["secretName"], e["secretKey"], e["envVar"]) for cfg in executors.values()
            for s in cfg.get("secretAsEnv", []) for e in s["keyToEnv"]}
    assert {("planted-s3", "secret-key", "AWS_SECRET_ACCESS_KEY"),
            ("planted-mlflow", "password", "MLFLOW_TRACKING_PASSWORD")} <= refs
    parameters = docs[0]["root"]["inputDefinitions"]["parameters"]
    defaults = {name: p.get("defaultValue") for name, p in parameters.items()}
    assert not [n for n, v in defaults.items() if SECRET in str(v) or credential_uris(str(v))]
    assert defaults.get("tracking_uri", "") == ""  # the compiling machine's MLFLOW_TRACKING_URI is not baked in


def test_a_secret_value_pasted_where_a_secret_name_goes_is_refused_without_repeating_it(tmp_path):
    platform = tmp_path / "platform.yaml"
    platform.write_text(yaml.safe_dump({"secrets": [{"secret": SECRET, "env": {"key": "AWS_SECRET_ACCESS_KEY"}}]}))
    ran = kdflow("compile", "--platform", str(platform), "-o", str(tmp_path / "pipeline.yaml"))
    assert ran.code == 2 and "secrets[0].secret" in ran.err and "kubectl create secret" in ran.err
    assert SECRET not in ran.out + ran.err and not (tmp_path / "pipeline.yaml").exists()


def test_secrets_mapped_to_any_variable_name_are_masked(monkeypatch):
    """A Kubernetes secret may become any variable (the platform file maps keys to names): a name that
    says it holds a secret has its value masked too; names that only point at one are left alone."""
    secret = {"DB_PASSWORD": "db", "CLIENT_SECRET": "client", "GITHUB_TOKEN": "gh", "STORAGE_ACCOUNT_KEY": "az",
              "GCP_CREDENTIALS": "gcp", "minio_root_password": "minio", "AZURE_STORAGE_CONNECTION_STRING": "azure"}
    plain = {"AWS_ACCESS_KEY_ID": "AKIAPLAINPLAINPLAIN", "TOKENIZERS_PARALLELISM": "not-a-secret-at-all",
             "HF_TOKEN_PATH": "/plain/hf/token/path", "PASSWORD_FILE": "/plain/run/pw.txt",
             "KDFLOW_PLAIN": "kdflow-plain-value"}
    for name, tag in secret.items():
        monkeypatch.setenv(name, f"{SECRET}-{tag}")
    for name, value in plain.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SHORT_TOKEN", "abc1234")  # under MIN_SECRET_LENGTH: an ordinary word, not masked
    line = " ".join([*(f"{SECRET}-{tag}" for tag in secret.values()), *plain.values(), "abc1234"])
    assert redact_text(line) == " ".join(["***"] * len(secret) + [*plain.values(), "abc1234"])


UNCAUGHT = f"""
import os, threading
from kdflow.util.logs import setup_logging

setup_logging()
url = "http://alice:" + "{SECRET}" + "-pw@mlflow.example.com/api/2.0/mlflow/runs/get"

def worker():
    raise ConnectionError(f"API request to {{url}} failed (key {{os.environ['DB_PASSWORD']}})")

t = threading.Thread(target=worker)
t.start()
t.join()
raise RuntimeError(f"API request to {{url}} failed (key {{os.environ['DB_PASSWORD']}})")
"""
BOOM = f"""
import sys, click
from kdflow import cli

@cli.main.command("boom")
def boom():
    raise RuntimeError("cannot reach http://alice:{SECRET}-pw@mlflow:5000/api with {SECRET}-db")

sys.argv = ["kdflow", "boom"]
cli.entrypoint()
"""


@pytest.mark.parametrize("script", [UNCAUGHT, BOOM], ids=["step", "cli"])
def test_an_uncaught_exception_is_printed_redacted(script):
    """A step (which calls setup_logging first) or the CLI dying of an unexpected exception whose
    message quotes a URI with a password (as MLflow's errors quote the tracking URL) and a secret of
    the environment: the traceback in its log names neither, and the process still fails."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "DB_PASSWORD": f"{SECRET}-db"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=hang_guard(120))
    assert done.returncode == 1, done.stderr
    assert "Traceback" in done.stderr and "RuntimeError" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "http://***@mlflow" in done.stderr and "***" in done.stderr.split("RuntimeError")[-1]
    if script is UNCAUGHT:  # a thread's uncaught exception too
        assert "Exception in thread" in done.stderr and "ConnectionError: API request to http://***@" in done.stderr


@pytest.mark.parametrize("variable", ["AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"])
def test_a_compiled_spec_that_would_hold_a_secret_is_refused_and_deleted(tmp_path, variable):
    """The last line of defence of `kdflow compile`: a secret value of the environment that reaches the
    spec anyway (here through --image-prefix, which the spec holds verbatim) refuses the compile, the
    message does not repeat it, and the written spec is deleted."""
    value = f"registry.example.com/{SECRET.lower()}"
    spec = tmp_path / "pipeline.yaml"
    ran = kdflow("compile", "--image-prefix", value, "-o", str(spec), env={variable: value})
    assert ran.code == 2, ran.err
    assert "the compiled pipeline would hold a secret value of this environment" in ran.err
    assert SECRET.lower() not in ran.out + ran.err and not spec.exists()
    control = kdflow("compile", "--image-prefix", value, "-o", str(spec))  # the same spec, without the secret
    assert control.code == 0, control.err
    assert SECRET.lower() in spec.read_text()


def test_a_secret_looking_variable_masks_logs_but_does_not_refuse_a_spec(tmp_path):
    """POSTGRES_PASSWORD=postgres is masked wherever it shows in a log, but a spec that holds the word
    is not refused for it: refusals check kdflow's own secret variables (redact.SECRET_ENV)."""
    spec = tmp_path / "pipeline.yaml"
    ran = kdflow("compile", "--image-prefix", "registry.example.com/postgresql-client", "-o", str(spec),
                 env={"POSTGRES_PASSWORD": "postgresql-client"})
    assert ran.code == 0, ran.err
    with mock.patch.dict(os.environ, {"POSTGRES_PASSWORD": "postgresql-client"}):
        assert redact_text("image registry.example.com/postgresql-client") == "image registry.example.com/***"


def test_credentials_of_an_environment_tracking_uri_never_reach_mlflow_or_stdout(mlflow_server, tmp_path):
    """On a cluster $MLFLOW_TRACKING_URI may come from a Kubernetes secret with credentials in it. kdflow
    hands MLflow the URI without them (they go to MLFLOW_TRACKING_USERNAME/PASSWORD) and stops MLflow
    printing "View run ... at <URI>" when a run ends: a real run against the server leaks nothing."""
    import subprocess

    uri = mlflow_server.replace("http://", f"http://kdflow-user:{SECRET}-mlflow@")
    code = ("import mlflow; from kdflow.util.logs import setup_logging; from kdflow.registry import tracking; setup_logging(); "
            "uri = tracking.use_tracking(None); print('using', uri); "
            "exp = tracking.experiment_id('secret-env-uri', uri); "
            "run = mlflow.start_run(experiment_id=exp); mlflow.log_param('p', 1); mlflow.end_run(); print('ok')")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MLFLOW_TRACKING_USERNAME", None)
    env.pop("MLFLOW_TRACKING_PASSWORD", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=hang_guard(180))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "ok"
    assert f"using {mlflow_server}" in done.stdout  # MLflow was given the URI without user-info
    assert SECRET not in done.stdout + done.stderr


def test_the_sweep_records_its_files_and_error_redacted(tmp_path, monkeypatch, tiny_labelled, tiny_config_yaml):
    """start_sweep logs the sweep file, the plan and the labelling config to the parent run; close_sweep
    puts the pipeline's error text into tags: with a URI token and a secret value in them, none is kept."""
    import mlflow
    from mlflow import MlflowClient

    from kdflow.steps.sweep import close_sweep, start_sweep
    from kdflow.sweep.plan import expand
    from kdflow.sweep.spec import SweepSpec
    from kdflow.registry.tags import SweepTag

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", f"{SECRET}-aws")
    base = {**yaml.safe_load(tiny_config_yaml), "teacher_uri": f"https://h/t.pt?token={SECRET}",
            "data_uri": f"/data/{SECRET}-aws"}
    plan = expand(SweepSpec.from_dict({"config": base, "parameters": {"train.seed": [0, 1]}}), Config.from_dict(base))
    cfg_yaml = plan.labelling_config().to_yaml()
    dataset = tiny_labelled.dataset  # the tiny data preprocessed with these data settings
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started = start_sweep(str(dataset), cfg_yaml, plan.to_json(), uri, pipeline_run="p1", sweep_id="s1")
    error = f"task distill failed: API request to http://u:{SECRET}@mlflow:5000/api failed, key {SECRET}-aws"
    assert close_sweep("s1", uri, "FAILED", error=error, pipeline_run="p1") == [started["parent_run_id"]]

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(started["parent_run_id"])
    assert parent.data.tags[SweepTag.ERROR] == "task distill failed: API request to http://***@mlflow:5000/api " \
                                               "failed, key ***"
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, tracking_uri=uri,
                                                         dst_path=str(tmp_path / "got")))
    logged = {p.relative_to(artifacts).as_posix(): p.read_text() for p in artifacts.rglob("*") if p.is_file()}
    assert {"sweep/spec.yaml", "sweep/plan.json", "sweep/labelling-config.yaml"} <= set(logged)
    assert all(SECRET not in text for text in logged.values())
    assert "token=***" in logged["sweep/spec.yaml"] and "token=***" in logged["sweep/labelling-config.yaml"]
    assert yaml.safe_load(logged["sweep/spec.yaml"])["parameters"] == {"train.seed": [0, 1]}
    assert SECRET.encode() not in (tmp_path / "mlflow.db").read_bytes()
    assert (tmp_path / "mlartifacts").is_dir() and files_holding(tmp_path / "mlartifacts") == []
