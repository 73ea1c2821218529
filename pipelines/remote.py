"""Submit and schedule a compiled pipeline on a Kubeflow Pipelines cluster with ``kfp.Client`` (the KFP
v2beta1 REST API): upload it (a new version when the pipeline exists), start a run or create a
recurring run pinned to that version, follow a run, list and delete recurring runs.

Every failure the user can act on (unreachable host, refused token, unknown id) becomes a
``KdflowError``; kfp's own chatter ("Pipeline details: ...") goes to stderr so that stdout carries
only what the CLI prints.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import kfp
import kfp.client
import kfp_server_api
import urllib3
import yaml

from kdflow.util.errors import KdflowError

TOKEN_ENV = "KF_PIPELINES_TOKEN"
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"  # kfp.client.client.KF_PIPELINES_UI_ENDPOINT_ENV
SUCCEEDED = "SUCCEEDED"
# CANCELING and PAUSED are not final; kfp's own wait_for_run_completion misses CANCELED and would
# poll a cancelled run forever, hence a loop of our own.
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"})
# --wait may follow a run for hours: ride out this many failed polls in a row (a proxy restarting,
# a dropped connection) before giving up.
POLL_RETRIES = 5


class RemoteError(KdflowError):
    """The KFP API answered with an error (``status`` its HTTP status; 0 when it could not be reached)."""

    def __init__(self, problem: str, fix: str, status: int = 0):
        super().__init__(problem, fix)
        self.status = status


@dataclass(frozen=True)
class Auth:
    """Where the bearer token comes from: a literal token, or a file re-read on every request
    (kubelet-projected service-account tokens rotate); ``source`` is said to the user."""

    token: str | None = None
    token_file: str | None = None
    source: str = "none"


def resolve_auth(token: str | None) -> Auth:
    """The token, from the first place that has one: ``token`` (--token), $KF_PIPELINES_TOKEN, the
    service-account token file kfp reads in a cluster ($KF_PIPELINES_SA_TOKEN_PATH, else
    /var/run/secrets/kubeflow/pipelines/token). None of them: no Authorization header."""
    if token:
        return Auth(token=token.strip(), source="--token")
    if os.environ.get(TOKEN_ENV):
        return Auth(token=os.environ[TOKEN_ENV].strip(), source=f"${TOKEN_ENV}")
    named = os.environ.get(kfp.client.KF_PIPELINES_SA_TOKEN_ENV)
    path = named or kfp.client.KF_PIPELINES_SA_TOKEN_PATH
    if Path(path).is_file():
        return Auth(token_file=path, source=path)
    if named:
        raise KdflowError(f"${kfp.client.KF_PIPELINES_SA_TOKEN_ENV} names {named}, which is not a file",
                          f"point it at the projected service-account token, or unset it and pass --token "
                          f"or ${TOKEN_ENV}")
    return Auth()


@contextlib.contextmanager
def api_errors(host: str, what: str) -> Iterator[None]:
    """Turn the errors of a call to the KFP API into KdflowErrors that say what to do."""
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except kfp_server_api.ApiException as exc:
        status = exc.status
        detail = _server_message(exc)
        if not status:  # kfp_server_api's own wrapping of TLS failures
            raise RemoteError(f"cannot reach Kubeflow Pipelines at {host} to {what} ({detail})",
                              "check --host and its TLS certificate") from None
        if status in (401, 403):
            raise RemoteError(f"{host} refused to {what} (HTTP {status}: {detail})",
                              f"pass a token allowed to use Kubeflow Pipelines: --token, ${TOKEN_ENV}, or "
                              f"${kfp.client.KF_PIPELINES_SA_TOKEN_ENV} in a cluster", status) from None
        if status == 404:
            raise RemoteError(f"{host} found nothing to {what} (HTTP 404: {detail})",
                              "check the id, and that --host is the Kubeflow Pipelines endpoint", status) from None
        raise RemoteError(f"{host} could not {what} (HTTP {status}: {detail})",
                          "the KFP API server's log says more", status) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # OSError includes kfp's healthz TimeoutError
        raise RemoteError(f"cannot reach Kubeflow Pipelines at {host} to {what} ({type(exc).__name__}: {exc})",
                          "check --host (e.g. http://localhost:8080 after `kubectl port-forward -n kubeflow "
                          "svc/ml-pipeline-ui 8080:80`)") from None
    except ValueError as exc:  # kfp's own checks: two pipelines or experiments of one name
        raise KdflowError(f"could not {what} on {host}: {exc}",
                          "names must be unique on the cluster: pass another --pipeline-name or --experiment, "
                          "or remove the duplicate in the KFP UI") from None


def _server_message(exc: Any) -> str:
    try:
        body = json.loads(exc.body)
        return body.get("message") or body.get("error") or exc.reason
    except (TypeError, ValueError, AttributeError):
        return str(exc.body or exc.reason)[:300]


def connect(host: str, auth: Auth, namespace: str | None = None) -> "kfp.Client":
    """A kfp.Client for ``host`` (asks the server's healthz, as kfp does on start)."""
    kwargs: dict[str, Any] = {"host": host}
    if auth.token:
        kwargs["existing_token"] = auth.token
    elif auth.token_file:
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(auth.token_file)
    if namespace:
        kwargs["namespace"] = namespace
    with warnings.catch_warnings(), api_errors(host, "connect"):
        # kfp warns on every Client() that it needs KFP >= 2.0.0-beta.2: true of every v2beta1 server.
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(**kwargs)


def declared_parameters(spec_path: str) -> dict[str, dict]:
    """The pipeline parameters a compiled spec declares (name -> KFP's definition)."""
    with open(spec_path) as f:
        spec = next(yaml.safe_load_all(f))
    return dict(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


def prepare_spec(spec_path: str, image_prefix: str, no_cache: bool = False) -> None:
    """Refuse a compiled spec whose images are not all under ``image_prefix``, and with ``no_cache``
    turn KFP's step caching off in it.

    kfp.Client's ``enable_caching=False`` rewrites only an inline spec's root-DAG tasks; a run of an
    uploaded version takes the caching options of that version's spec, and the teacher inference
    sits in a nested condition DAG. So the spec itself says ``enableCache: false`` for every task of
    every DAG before it is uploaded."""
    with open(spec_path) as f:
        docs = list(yaml.safe_load_all(f))
    spec = docs[0]
    images = sorted({e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
                     if "container" in e})
    stray = [i for i in images if not i.startswith(image_prefix.rstrip("/") + "/")]
    if stray:
        raise KdflowError(f"the compiled pipeline names images outside --image-prefix {image_prefix}: "
                          f"{', '.join(stray)}", "push every image with `make push REGISTRY=R` and pass "
                          "--image-prefix R; a platform file must not name other images")
    if not no_cache:
        return
    dags = [spec["root"]] + [c for c in spec.get("components", {}).values() if "dag" in c]
    for dag in dags:
        for task in dag["dag"].get("tasks", {}).values():
            task["cachingOptions"] = {**task.get("cachingOptions", {}), "enableCache": False}
    with open(spec_path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


@dataclass(frozen=True)
class Published:
    pipeline_id: str
    version_id: str
    version_name: str
    new_pipeline: bool


def publish(client: "kfp.Client", host: str, spec_path: str, pipeline_name: str, note: str = "") -> Published:
    """Upload the spec: as a new pipeline named ``pipeline_name``, or as a new version of the existing
    one. Versions are named by time and spec digest, so every upload is traceable."""
    digest = hashlib.sha256(Path(spec_path).read_bytes()).hexdigest()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    # The random tail keeps two uploads of one spec in the same second apart (KFP wants unique names).
    version_name = f"{pipeline_name}-{stamp}-{digest[:12]}-{uuid.uuid4().hex[:6]}"
    description = f"{note} (spec sha256 {digest})".strip()
    with api_errors(host, f"look up pipeline {pipeline_name}"):
        pipeline_id = client.get_pipeline_id(pipeline_name)
    pipeline = None
    if pipeline_id is None:
        try:
            with api_errors(host, f"upload pipeline {pipeline_name}"):
                pipeline = client.upload_pipeline(spec_path, pipeline_name=pipeline_name, description=description)
        except RemoteError as exc:
            if exc.status != 409:
                raise
            # Someone uploaded it since we looked: add our version to theirs.
            with api_errors(host, f"look up pipeline {pipeline_name}"):
                pipeline_id = client.get_pipeline_id(pipeline_name)
            if pipeline_id is None:
                raise
    if pipeline is not None:
        # The upload made the pipeline and its first version; the response names only the pipeline.
        with api_errors(host, f"find the version of pipeline {pipeline_name}"):
            listed = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
        versions = listed.pipeline_versions or []
        if not versions:
            raise KdflowError(f"{host} made pipeline {pipeline_name} but lists no version of it",
                              "look at the pipeline in the KFP UI; submit again to add a version")
        return Published(pipeline.pipeline_id, versions[0].pipeline_version_id, versions[0].display_name, True)
    with api_errors(host, f"upload a version of pipeline {pipeline_name}"):
        version = client.upload_pipeline_version(spec_path, version_name, pipeline_id=pipeline_id,
                                                  description=description)
    return Published(pipeline_id, version.pipeline_version_id, version_name, False)


def experiment_id(client: "kfp.Client", host: str, name: str, namespace: str | None) -> str:
    """The id of experiment ``name``, made when it does not exist yet."""
    with api_errors(host, f"get or create experiment {name}"):
        return client.create_experiment(name, namespace=namespace).experiment_id


def start_run(client: "kfp.Client", host: str, experiment: str, run_name: str, published: Published,
              parameters: dict[str, Any], no_cache: bool = False) -> str:
    """A run of exactly this version. ``no_cache``: caching off (the version's spec must say so too,
    see prepare_spec: kfp applies ``enable_caching`` to inline specs only)."""
    with api_errors(host, "start the run"):
        run = client.run_pipeline(experiment_id=experiment, job_name=run_name, params=parameters,
                                  pipeline_id=published.pipeline_id, version_id=published.version_id,
                                  enable_caching=False if no_cache else None)
    return run.run_id


def create_schedule(client: "kfp.Client", host: str, experiment: str, name: str, cron: str,
                    published: Published, parameters: dict[str, Any], no_cache: bool = False) -> str:
    """A recurring run of exactly this version: at most one run at a time, and no catch-up (a paused
    or late schedule starts one run, not one per missed slot)."""
    with api_errors(host, "create the recurring run"):
        job = client.create_recurring_run(
            experiment_id=experiment, job_name=name, description=f"kdflow schedule {cron!r}",
            cron_expression=cron, max_concurrency=1, no_catchup=True, params=parameters,
            pipeline_id=published.pipeline_id, version_id=published.version_id, enabled=True,
            enable_caching=False if no_cache else None)
    return job.recurring_run_id


@dataclass(frozen=True)
class Outcome:
    state: str
    error: str = ""


def wait_for_run(client: "kfp.Client", host: str, run_id: str, poll_seconds: float,
                 on_state: Callable[[str], None] = lambda state: None,
                 sleep: Callable[[float], None] = time.sleep) -> Outcome:
    """Poll the run until it reaches a final state; ``on_state`` hears each new state."""
    last, failures = None, 0
    while True:
        try:
            with api_errors(host, f"get run {run_id}"):
                run = client.get_run(run_id)
            failures = 0
        except RemoteError as exc:
            failures += 1
            if failures > POLL_RETRIES or 400 <= exc.status < 500:  # a 4xx will not heal by waiting
                raise
            sleep(poll_seconds)
            continue
        state = str(run.state or "PENDING")
        if state != last:
            on_state(state)
            last = state
        if state in FINAL_STATES:
            error = getattr(run.error, "message", None) if run.error is not None else None
            return Outcome(state, error or "")
        sleep(poll_seconds)


def list_schedules(client: "kfp.Client", host: str, namespace: str | None) -> list[dict[str, str]]:
    """Every recurring run the caller can see, page by page."""
    rows, token = [], ""
    while True:
        with api_errors(host, "list recurring runs"):
            page = client.list_recurring_runs(page_token=token, page_size=100,
                                              namespace=namespace or client.get_user_namespace() or None)
        for r in page.recurring_runs or []:
            trigger = r.trigger
            cron = getattr(getattr(trigger, "cron_schedule", None), "cron", None)
            every = getattr(getattr(trigger, "periodic_schedule", None), "interval_second", None)
            ref = r.pipeline_version_reference
            rows.append({"id": r.recurring_run_id or "", "status": str(r.status or r.mode or ""),
                         "schedule": cron or (f"every {every}s" if every else ""),
                         "version": getattr(ref, "pipeline_version_id", "") or "",
                         "name": r.display_name or ""})
        token = page.next_page_token or ""
        if not token:
            return rows


def delete_schedule(client: "kfp.Client", host: str, recurring_run_id: str) -> None:
    try:
        with api_errors(host, f"delete recurring run {recurring_run_id}"):
            client.delete_recurring_run(recurring_run_id)
    except RemoteError as exc:
        if exc.status == 404:
            raise KdflowError(f"there is no recurring run {recurring_run_id} on {host}",
                              "`kdflow schedule list` shows the ids") from None
        raise


def ui_base(host: str) -> str:
    """Where the KFP UI is: $KF_PIPELINES_UI_ENDPOINT when set (read now; http:// when it names no
    scheme, as kfp.Client does), else the API host (the UI serves both behind one port-forward)."""
    ui = os.environ.get(UI_ENV, "").strip() or host
    return (ui if ui.startswith(("http://", "https://")) else f"http://{ui}").rstrip("/")


def run_url(host: str, run_id: str) -> str:
    return f"{ui_base(host)}/#/runs/details/{run_id}"


def schedule_url(host: str, recurring_run_id: str) -> str:
    return f"{ui_base(host)}/#/recurringrun/details/{recurring_run_id}"
