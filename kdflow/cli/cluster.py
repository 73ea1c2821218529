"""``kdflow submit`` and ``kdflow schedule``: the distill pipeline on a Kubeflow Pipelines cluster.

Every input is checked here, before anything is compiled or sent: the run's pods read their data,
teacher and cache from object storage and report to a tracking server, so a path or a SQLite store
on the submitting machine is refused with the fix, as are a cron expression KFP would misread, a URI
with a credential in it, and images this project never published. kfp is imported only inside the
commands (through kdflow.pipelines.remote), never by the core library.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from kdflow.cluster.inputs import _HTTP, cluster_config
from kdflow.util.errors import KdflowError
from kdflow.util.redact import has_credentials, redact_uri, without_userinfo

if TYPE_CHECKING:
    from kdflow.config import Config

# Docker Hub spells the namespace of the unpublished default images (components/images.py) several ways.
IMAGE_PREFIX_ENV = "KDFLOW_IMAGE_PREFIX"
_DOCKER_HUB = re.compile(r"^(?:(?:index\.|registry-1\.)?docker\.io/)?(?:library/)?")
SKIP_PARAMETER = "skip_unchanged"
PROMOTE_PARAMETER = "auto_promote"
DEFAULT_EXPERIMENT = "Default"  # KFP's own default experiment
def require_image_prefix(prefix: str | None) -> str:
    """The registry prefix of the component images, refused when it names the unpublished defaults."""
    from kdflow.components.images import IMAGE_PREFIX

    value = (prefix or "").strip().rstrip("/")
    hub = _DOCKER_HUB.sub("", value, count=1)
    if value and hub != IMAGE_PREFIX and not hub.startswith(IMAGE_PREFIX + "/"):
        return value
    named = f"--image-prefix {value}" if value else "no --image-prefix"
    raise KdflowError(f"{named}: the default images ({IMAGE_PREFIX}/kdflow-cpu, {IMAGE_PREFIX}/kdflow-gpu) name "
                      f"Docker Hub's `{IMAGE_PREFIX}` namespace, which this project does not own or publish, and "
                      "every step receives the S3 and MLflow credentials of its secrets",
                      "build and push the images: `make images && make push REGISTRY=R`, then pass "
                      f"--image-prefix R (or set {IMAGE_PREFIX_ENV})")


def run_parameters(cfg: Config, declared: dict, skip_unchanged: bool, auto_promote: bool = False) -> dict:
    """The run's pipeline parameters. ``skip_unchanged`` and ``auto_promote`` are passed only when the
    compiled pipeline declares them (older pipelines do not: said on stderr)."""
    parameters = {"data_uri": cfg.data_uri, "teacher_uri": cfg.teacher_uri, "config": cfg.to_yaml(),
                  "cache_uri": cfg.cache_uri, "tracking_uri": cfg.tracking_uri or ""}
    from kdflow.util.redact import refuse_secrets_in

    for name, value in parameters.items():  # the last look before they leave this machine
        refuse_secrets_in(str(value), f"pipeline parameter {name}")
    for name, value, otherwise in ((SKIP_PARAMETER, skip_unchanged, "every run retrains"),
                                   (PROMOTE_PARAMETER, auto_promote, "nothing is promoted automatically")):
        if name in declared:
            parameters[name] = value
        elif value:
            click.echo(f"warning: this pipeline has no {name} parameter: {otherwise}", err=True)
    return parameters


def _options(*options):
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


_connection_options = _options(
    click.option("--host", envvar="KF_PIPELINES_ENDPOINT", metavar="URL",
                 help="Kubeflow Pipelines endpoint, e.g. http://localhost:8080 after `kubectl port-forward -n "
                      "kubeflow svc/ml-pipeline-ui 8080:80`. Default: $KF_PIPELINES_ENDPOINT. Printed run URLs "
                      "use $KF_PIPELINES_UI_ENDPOINT when set."),
    click.option("--token", metavar="TOKEN",
                 help="Bearer token for the API. Default: $KF_PIPELINES_TOKEN, else the service-account token "
                      "file kfp reads in a cluster ($KF_PIPELINES_SA_TOKEN_PATH, else "
                      "/var/run/secrets/kubeflow/pipelines/token), else none."),
    click.option("--namespace", metavar="NS",
                 help="Your profile's namespace on a multi-user Kubeflow (experiments and runs go there). "
                      "Default: kfp's saved context, else single-user."),
)

_pipeline_options = _options(
    click.option("--config", "config_path", metavar="FILE",
                 help="YAML run config (see `kdflow config`); its data_uri, teacher_uri, cache_uri and tracking_uri "
                      "are used unless a flag below says otherwise. Default: the generic defaults."),
    click.option("--data", metavar="URI", help="Image folder in object storage: s3://BUCKET/PREFIX."),
    click.option("--teacher", metavar="URI",
                 help="Teacher: s3://BUCKET/teacher.pt, models:/NAME@ALIAS or runs:/RUN_ID/PATH."),
    click.option("--cache-uri", metavar="URI", help="Soft-label cache root: s3://BUCKET/PREFIX."),
    click.option("--tracking-uri", metavar="URL",
                 help="MLflow server the steps report to: http(s)://..., without credentials (they go in the "
                      "kdflow-mlflow secret). Default: the config's, else empty (the steps read "
                      "MLFLOW_TRACKING_URI from their Kubernetes secret)."),
    click.option("--platform", "platform_file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
                 help="Kubernetes settings file for the compiled pipeline (secrets, resources, ...). "
                      "Default: the built-in settings."),
    click.option("--image-prefix", envvar=IMAGE_PREFIX_ENV, metavar="PREFIX",
                 help="Registry/repository prefix of the component images you pushed with `make push "
                      f"REGISTRY=PREFIX`, e.g. ghcr.io/acme. Required. Default: ${IMAGE_PREFIX_ENV}."),
    click.option("--pipeline-name", metavar="NAME",
                 help="Name of the pipeline on the cluster; an existing one gets a new version. "
                      "Default: the pipeline's own name (kdflow-distill)."),
    click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, metavar="NAME",
                 help="KFP experiment the run belongs to (made if missing)."),
    click.option("--no-cache", is_flag=True,
                 help="Create the run with KFP's step caching disabled (preprocessing and teacher adaptation run "
                      "again, e.g. after their outputs in object storage were deleted). "
                      "Default: the compiled caching options."),
    click.option("--auto-promote", is_flag=True,
                 help="Make a registered student the registry's champion when it passes the gate against the "
                      "current champion (pipeline parameter auto_promote). Default: it waits for `kdflow promote`."),
)


def _require_host(host: str | None) -> str:
    if not host:
        raise click.UsageError("--host is required (or set $KF_PIPELINES_ENDPOINT)")
    if has_credentials(host):
        raise KdflowError(f"--host {redact_uri(host)} carries a user name or password",
                          f"pass the bare endpoint (--host {without_userinfo(host)}, or $KF_PIPELINES_ENDPOINT) and the "
                          "credential as a bearer token: --token or $KF_PIPELINES_TOKEN")
    if not _HTTP.fullmatch(host):
        # kfp would quietly assume https://, and the printed run URL would be wrong.
        raise KdflowError(f"--host {host} is not an http(s):// URL", f"pass e.g. --host http://{host.split('://')[-1]}")
    return host.rstrip("/")


@dataclass(frozen=True)
class Target:
    """Where and what to deploy: the connection and pipeline options of submit and schedule."""

    host: str
    token: str | None
    namespace: str | None
    config_path: str | None
    data: str | None
    teacher: str | None
    cache_uri: str | None
    tracking_uri: str | None
    platform_file: str | None
    image_prefix: str | None
    pipeline_name: str | None
    experiment: str
    no_cache: bool
    auto_promote: bool

    @classmethod
    def of(cls, options: dict[str, Any]) -> "Target":
        return cls(**{**options, "host": _require_host(options["host"])})


_GROUP_ONLY = ({f.name for f in dataclasses.fields(Target)} - {"host", "token", "namespace"}
               | {"cron", "name", "always_retrain"})  # options of `kdflow schedule` its subcommands ignore


@dataclass
class _Deployment:
    remote: Any  # kdflow.pipelines.remote, imported late
    client: Any
    pipeline_name: str
    published: Any
    experiment_id: str
    parameters: dict


def _deploy(t: Target, skip_unchanged: bool, note: str) -> _Deployment:
    """Check every input, compile, connect, upload, find the experiment. Nothing is sent before
    every local check has passed."""
    image_prefix = require_image_prefix(t.image_prefix)
    cfg = cluster_config(t.config_path, t.data, t.teacher, t.cache_uri, t.tracking_uri)
    from kdflow.pipelines import remote
    from kdflow.pipelines.distill_pipeline import PIPELINE_NAME
    from kdflow.pipelines.local import compile_pipeline

    auth = remote.resolve_auth(t.token)
    pipeline_name = t.pipeline_name or PIPELINE_NAME
    with tempfile.TemporaryDirectory(prefix="kdflow-submit-") as tmp:
        spec = str(Path(tmp) / "pipeline.yaml")
        compile_pipeline(spec, "distill", platform_file=t.platform_file, image_prefix=image_prefix)
        remote.prepare_spec(spec, image_prefix, no_cache=t.no_cache)
        parameters = run_parameters(cfg, remote.declared_parameters(spec), skip_unchanged, t.auto_promote)
        client = remote.connect(t.host, auth, t.namespace)
        published = remote.publish(client, t.host, spec, pipeline_name, note)
    click.echo(f"{'uploaded new pipeline' if published.new_pipeline else 'uploaded a new version of'} "
               f"{pipeline_name}: version {published.version_name} ({published.version_id}); "
               f"token: {auth.source}{'; step caching off' if t.no_cache else ''}", err=True)
    exp_id = remote.experiment_id(client, t.host, t.experiment, t.namespace)
    return _Deployment(remote, client, pipeline_name, published, exp_id, parameters)


@click.command()
@_connection_options
@_pipeline_options
@click.option("--run-name", metavar="NAME", help="Display name of the run. Default: the pipeline name and the time.")
@click.option("--skip-unchanged", is_flag=True,
              help="Stop after preprocessing when the dataset, teacher and config match the registry's champion "
                   "(or the unpromoted student holding registry.alias).")
@click.option("--wait", is_flag=True,
              help="Follow the run to its end; exit 0 when it succeeded, 1 otherwise (the state is said).")
@click.option("--poll-interval", type=click.FloatRange(min=0, min_open=True), default=15.0, show_default=True,
              metavar="SECONDS", help="Seconds between two looks at the run's state with --wait.")
def submit(run_name, skip_unchanged, wait, poll_interval, **options) -> None:
    """Compile the distill pipeline, upload it to Kubeflow Pipelines and start a run; print its URL.

    Data, teacher and cache must be in object storage (s3://; the teacher may be models:/ or runs:/),
    the tracking URI an MLflow server (or empty), none of them with credentials, and the images
    pushed to your registry (--image-prefix): the run's pods cannot read this machine.

    Exit status: 0 started (with --wait: succeeded), 1 the run did not succeed, 2 bad input,
    130 --wait interrupted (the run goes on).
    """
    target = Target.of(options)
    d = _deploy(target, skip_unchanged, "kdflow submit")
    remote, client, host = d.remote, d.client, target.host
    run_name = run_name or f"{d.pipeline_name} {dt.datetime.now():%Y-%m-%d %H:%M:%S}"
    run_id = remote.start_run(client, host, d.experiment_id, run_name, d.published, d.parameters, target.no_cache)
    url = remote.run_url(host, run_id)
    click.echo(url)
    if not wait:
        return
    try:
        outcome = remote.wait_for_run(client, host, run_id, poll_interval,
                                      on_state=lambda state: click.echo(f"run {run_id}: {state}", err=True))
    except KeyboardInterrupt:  # Ctrl-C stops the waiting, not the run
        click.echo(f"stopped following run {run_id}; it goes on: {url}", err=True)
        raise SystemExit(130) from None
    if outcome.state != remote.SUCCEEDED:
        detail = f": {outcome.error}" if outcome.error else ""
        raise click.ClickException(f"run {run_id} ended {outcome.state}{detail}\n  {url}")


def _refuse_group_options(ctx: click.Context) -> None:
    """`kdflow schedule --config X list` would quietly ignore --config: refuse it."""
    given = [p.opts[0] for p in ctx.command.params
             if p.name in _GROUP_ONLY and ctx.get_parameter_source(p.name) == ParameterSource.COMMANDLINE]
    if given:
        raise click.UsageError(f"`kdflow schedule {ctx.invoked_subcommand}` takes no {', '.join(given)}: only --host, "
                               "--token and --namespace may come before a subcommand", ctx)


@click.group(invoke_without_command=True)
@click.pass_context
@_connection_options
@_pipeline_options
@click.option("--cron", metavar="EXPR",
              help='When to run: KFP\'s six-field cron, seconds first, in UTC, e.g. "0 0 3 * * *" for 03:00 every '
                   'day (a five-field crontab line is refused with its six-field form); or @daily, @every 6h.')
@click.option("--name", metavar="NAME", help="Display name of the recurring run. Default: the pipeline name and cron.")
@click.option("--always-retrain", is_flag=True,
              help="Retrain on every run. Default: a run stops after preprocessing when the dataset, teacher "
                   "and config match the registry's champion, or the unpromoted student holding registry.alias "
                   "(pipeline parameter skip_unchanged).")
def schedule(ctx, cron, name, always_retrain, **options) -> None:
    """Run the distill pipeline on a schedule: a KFP recurring run of the version uploaded now.

    At most one run at a time, and no catch-up: a schedule that was paused or fell behind starts
    one run, not one per missed time. `kdflow schedule list` and `kdflow schedule delete ID` manage
    them.

    \b
    Example (03:00 UTC every day):
      kdflow schedule --host http://localhost:8080 --config run.yaml --image-prefix R --cron "0 0 3 * * *"
    """
    if ctx.invoked_subcommand is not None:
        _refuse_group_options(ctx)
        return
    from kdflow.cluster import cron as crontab

    if not cron:
        raise click.UsageError('--cron is required to create a schedule, e.g. --cron "0 0 3 * * *" '
                               "(or use `kdflow schedule list` / `kdflow schedule delete ID`)")
    target = Target.of(options)
    if target.no_cache:
        raise click.UsageError("--no-cache is for one run (`kdflow submit --no-cache`): on a schedule it would turn "
                               "KFP's step cache off for every future run", ctx)
    cron = crontab.validate(cron)
    d = _deploy(target, not always_retrain, f"kdflow schedule {cron!r}")
    remote, host = d.remote, target.host
    name = name or f"{d.pipeline_name} {cron}"
    rid = remote.create_schedule(d.client, host, d.experiment_id, name, cron, d.published, d.parameters,
                                 target.no_cache)
    upcoming = ", ".join(f"{t:%Y-%m-%d %H:%M:%S}" for t in crontab.next_times(cron, dt.datetime.now(dt.timezone.utc)))
    click.echo(f"recurring run {rid} ({name}); next runs (UTC): {upcoming}; "
               f"remove with `kdflow schedule delete {rid}`", err=True)
    click.echo(remote.schedule_url(host, rid))


def _inherit(ctx, **values):
    """Connection options may be given before the subcommand too (`kdflow schedule --host URL list`)."""
    parent = ctx.parent.params if ctx.parent else {}
    return {k: v if v is not None else parent.get(k) for k, v in values.items()}


@schedule.command("list")
@click.pass_context
@_connection_options
def schedule_list(ctx, host, token, namespace) -> None:
    """List the recurring runs: id, status, cron, pinned pipeline version, name."""
    o = _inherit(ctx, host=host, token=token, namespace=namespace)
    host = _require_host(o["host"])
    from kdflow.pipelines import remote

    client = remote.connect(host, remote.resolve_auth(o["token"]), o["namespace"])
    rows = remote.list_schedules(client, host, o["namespace"])
    if not rows:
        click.echo("no recurring runs")
        return
    keys = ("id", "status", "schedule", "version", "name")
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    for row in [{k: k.upper() for k in keys}] + rows:
        click.echo("  ".join(f"{row[k]:{widths[k]}s}" for k in keys).rstrip())


@schedule.command("delete")
@click.pass_context
@click.argument("recurring_run_id", metavar="ID")
@_connection_options
def schedule_delete(ctx, recurring_run_id, host, token, namespace) -> None:
    """Delete the recurring run ID (runs it already started are kept)."""
    o = _inherit(ctx, host=host, token=token, namespace=namespace)
    host = _require_host(o["host"])
    from kdflow.pipelines import remote

    client = remote.connect(host, remote.resolve_auth(o["token"]), o["namespace"])
    remote.delete_schedule(client, host, recurring_run_id)
    click.echo(f"deleted recurring run {recurring_run_id}")


@click.command("compile")
@click.option("--output", "-o", default="pipeline.yaml", show_default=True, help="Where to write the spec.")
@click.option("--image-prefix", metavar="PREFIX",
              help="Registry/repository prefix for the component images, e.g. ghcr.io/acme. "
                   "Default: the package's own.")
@click.option("--pipeline", type=click.Choice(["distill", "sweep"]), default="distill", show_default=True,
              help="distill: one student. sweep: many trials from one teacher run, the best registered "
                   "(parameters config and trials: what `kdflow sweep` passes).")
@click.option("--platform", "platform_file", metavar="FILE",
              help="Kubernetes settings (GPU node selector and tolerations, resources, secrets, retries; see "
                   "examples/platform.yaml and docs/cluster.md). Default: the built-in settings.")
def compile_cmd(output: str, image_prefix: str | None, pipeline: str, platform_file: str | None) -> None:
    """Compile the pipeline to a KFP IR YAML for a cluster."""
    from kdflow.pipelines.local import compile_pipeline

    compile_pipeline(output, pipeline, platform_file, image_prefix)
    click.echo(output)
