"""``kdflow submit`` and ``kdflow schedule``: the distill pipeline on a Kubeflow Pipelines cluster.

Every input is checked here, before anything is compiled or sent: the run's pods read their data,
teacher and cache from object storage and report to a tracking server, so a path or a SQLite store
on the submitting machine is refused with the fix, as is a cron expression KFP would misread. kfp is
imported only inside the commands (through kdflow.pipelines.remote), never by the core library.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from kdflow.errors import KdflowError

if TYPE_CHECKING:
    from kdflow.config import Config

SKIP_PARAMETER = "skip_unchanged"
DEFAULT_EXPERIMENT = "Default"  # KFP's own default experiment
_S3 = re.compile(r"s3://[^/\s]+(/\S*)?")
_MODELS = re.compile(r"models:/\S+")
_HTTP = re.compile(r"https?://\S+")


def cluster_config(config_path: str | None, data: str | None, teacher: str | None, cache_uri: str | None,
                   tracking_uri: str | None) -> Config:
    """The run's config with the flags applied (a flag wins over the file), refused unless a pod on
    the cluster can reach every input it names."""
    from kdflow.inputs import load_config

    # Generic defaults without a file: the embedded digits config brings its data from this machine.
    cfg = load_config(config_path, embedded=False)
    cfg = cfg.replace(data_uri=data or cfg.data_uri, teacher_uri=teacher or cfg.teacher_uri,
                      cache_uri=cache_uri or cfg.cache_uri, tracking_uri=tracking_uri or cfg.tracking_uri or "")
    upload = "upload it first (e.g. `aws s3 sync {path} s3://BUCKET/PREFIX`) and pass {flag} s3://BUCKET/PREFIX"
    for key, flag, value in (("data_uri", "--data", cfg.data_uri), ("cache_uri", "--cache-uri", cfg.cache_uri)):
        if not value:
            raise KdflowError(f"no {key}: a cluster run needs it in object storage",
                              f"pass {flag} s3://BUCKET/PREFIX, or set {key} in the config file")
        if not _S3.fullmatch(value):
            raise KdflowError(f"{key} {value} is not an s3:// URI: the pipeline's pods cannot read a path or "
                              "URI of this machine", upload.format(path=value, flag=flag))
    if not cfg.teacher_uri:
        raise KdflowError("no teacher_uri: a cluster run needs the teacher in object storage or MLflow",
                          "pass --teacher s3://BUCKET/teacher.pt or --teacher models:/NAME@ALIAS")
    if not (_S3.fullmatch(cfg.teacher_uri) or _MODELS.fullmatch(cfg.teacher_uri)):
        raise KdflowError(f"teacher_uri {cfg.teacher_uri} is neither s3:// nor models:/: the pipeline's pods "
                          "cannot read a file of this machine",
                          f"upload it (`aws s3 cp {cfg.teacher_uri} s3://BUCKET/teacher.pt`) and pass --teacher "
                          "s3://BUCKET/teacher.pt, or register it in MLflow and pass models:/NAME@ALIAS")
    if cfg.tracking_uri and not _HTTP.fullmatch(cfg.tracking_uri):
        raise KdflowError(f"tracking_uri {cfg.tracking_uri} is not an http(s):// MLflow server: the pipeline's "
                          "pods cannot reach a store on this machine",
                          "pass --tracking-uri http://MLFLOW-SERVICE:5000, or leave it empty (--tracking-uri "
                          "unset and none in the config) so the steps read MLFLOW_TRACKING_URI from their "
                          "Kubernetes secret")
    return cfg


def run_parameters(cfg: Config, declared: dict, skip_unchanged: bool) -> dict:
    """The run's pipeline parameters. ``skip_unchanged`` is passed only when the compiled pipeline
    declares it (older pipelines do not; a scheduled run of one retrains every time, said on stderr)."""
    parameters = {"data_uri": cfg.data_uri, "teacher_uri": cfg.teacher_uri, "config": cfg.to_yaml(),
                  "cache_uri": cfg.cache_uri, "tracking_uri": cfg.tracking_uri or ""}
    if SKIP_PARAMETER in declared:
        parameters[SKIP_PARAMETER] = skip_unchanged
    elif skip_unchanged:
        click.echo(f"warning: this pipeline has no {SKIP_PARAMETER} parameter: every run retrains", err=True)
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
                      "kubeflow svc/ml-pipeline-ui 8080:80`. Default: $KF_PIPELINES_ENDPOINT."),
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
    click.option("--teacher", metavar="URI", help="Teacher: s3://BUCKET/teacher.pt or models:/NAME@ALIAS."),
    click.option("--cache-uri", metavar="URI", help="Soft-label cache root: s3://BUCKET/PREFIX."),
    click.option("--tracking-uri", metavar="URL",
                 help="MLflow server the steps report to: http(s)://.... Default: the config's, else empty "
                      "(the steps read MLFLOW_TRACKING_URI from their Kubernetes secret)."),
    click.option("--platform", "platform_file", type=click.Path(exists=True, dir_okay=False), metavar="FILE",
                 help="Kubernetes settings file for the compiled pipeline (secrets, resources, ...). "
                      "Default: the built-in settings."),
    click.option("--image-prefix", metavar="PREFIX",
                 help="Registry/repository prefix for the component images, e.g. ghcr.io/acme. "
                      "Default: the package's own."),
    click.option("--pipeline-name", metavar="NAME",
                 help="Name of the pipeline on the cluster; an existing one gets a new version. "
                      "Default: the pipeline's own name (kdflow-distill)."),
    click.option("--experiment", default=DEFAULT_EXPERIMENT, show_default=True, metavar="NAME",
                 help="KFP experiment the run belongs to (made if missing)."),
)


def _require_host(host: str | None) -> str:
    if not host:
        raise click.UsageError("--host is required (or set $KF_PIPELINES_ENDPOINT)")
    if not _HTTP.fullmatch(host):
        # kfp would quietly assume https://, and the printed run URL would be wrong.
        raise KdflowError(f"--host {host} is not an http(s):// URL", f"pass e.g. --host http://{host.split('://')[-1]}")
    return host.rstrip("/")


@dataclass
class _Deployment:
    remote: Any  # kdflow.pipelines.remote, imported late
    client: Any
    pipeline_name: str
    published: Any
    experiment_id: str
    parameters: dict


def _deploy(host, token, namespace, config_path, data, teacher, cache_uri, tracking_uri, platform_file,
            image_prefix, pipeline_name, experiment, skip_unchanged, note) -> _Deployment:
    """Check every input, compile, connect, upload, find the experiment. Nothing is sent before
    every local check has passed."""
    cfg = cluster_config(config_path, data, teacher, cache_uri, tracking_uri)
    from kdflow.pipelines import remote
    from kdflow.pipelines.distill_pipeline import PIPELINE_NAME
    from kdflow.pipelines.local import compile_pipeline

    auth = remote.resolve_auth(token)
    pipeline_name = pipeline_name or PIPELINE_NAME
    with tempfile.TemporaryDirectory(prefix="kdflow-submit-") as tmp:
        spec = str(Path(tmp) / "pipeline.yaml")
        compile_pipeline(spec, "distill", platform_file=platform_file, image_prefix=image_prefix)
        parameters = run_parameters(cfg, remote.declared_parameters(spec), skip_unchanged)
        client = remote.connect(host, auth, namespace)
        published = remote.publish(client, host, spec, pipeline_name, note)
    click.echo(f"{'uploaded new pipeline' if published.new_pipeline else 'uploaded a new version of'} "
               f"{pipeline_name}: version {published.version_name} ({published.version_id}); "
               f"token: {auth.source}", err=True)
    exp_id = remote.experiment_id(client, host, experiment, namespace)
    return _Deployment(remote, client, pipeline_name, published, exp_id, parameters)


@click.command()
@_connection_options
@_pipeline_options
@click.option("--run-name", metavar="NAME", help="Display name of the run. Default: the pipeline name and the time.")
@click.option("--skip-unchanged", is_flag=True,
              help="Stop after preprocessing when the dataset, teacher and config match the registry's champion.")
@click.option("--wait", is_flag=True,
              help="Follow the run to its end; exit 0 when it succeeded, 1 otherwise (the state is said).")
@click.option("--poll-interval", type=click.FloatRange(min=0, min_open=True), default=15.0, show_default=True,
              metavar="SECONDS", help="Seconds between two looks at the run's state with --wait.")
def submit(host, token, namespace, config_path, data, teacher, cache_uri, tracking_uri, platform_file,
           image_prefix, pipeline_name, experiment, run_name, skip_unchanged, wait, poll_interval) -> None:
    """Compile the distill pipeline, upload it to Kubeflow Pipelines and start a run; print its URL.

    Data, teacher and cache must be in object storage (s3://; the teacher may be models:/), and the
    tracking URI an MLflow server (or empty): the run's pods cannot read this machine.

    Exit status: 0 started (with --wait: succeeded), 1 the run did not succeed, 2 bad input,
    130 --wait interrupted (the run goes on).
    """
    host = _require_host(host)
    d = _deploy(host, token, namespace, config_path, data, teacher, cache_uri, tracking_uri, platform_file,
                image_prefix, pipeline_name, experiment, skip_unchanged, "kdflow submit")
    remote, client = d.remote, d.client
    run_name = run_name or f"{d.pipeline_name} {dt.datetime.now():%Y-%m-%d %H:%M:%S}"
    run_id = remote.start_run(client, host, d.experiment_id, run_name, d.published, d.parameters)
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
                   "and config match the registry's champion (pipeline parameter skip_unchanged).")
def schedule(ctx, host, token, namespace, config_path, data, teacher, cache_uri, tracking_uri, platform_file,
             image_prefix, pipeline_name, experiment, cron, name, always_retrain) -> None:
    """Run the distill pipeline on a schedule: a KFP recurring run of the version uploaded now.

    At most one run at a time, and no catch-up: a schedule that was paused or fell behind starts
    one run, not one per missed time. `kdflow schedule list` and `kdflow schedule delete ID` manage
    them.

    \b
    Example (03:00 UTC every day):
      kdflow schedule --host http://localhost:8080 --config run.yaml --cron "0 0 3 * * *"
    """
    if ctx.invoked_subcommand is not None:
        return
    from kdflow import cron as crontab

    if not cron:
        raise click.UsageError('--cron is required to create a schedule, e.g. --cron "0 0 3 * * *" '
                               "(or use `kdflow schedule list` / `kdflow schedule delete ID`)")
    host = _require_host(host)
    cron = crontab.validate(cron)
    d = _deploy(host, token, namespace, config_path, data, teacher, cache_uri, tracking_uri, platform_file,
                image_prefix, pipeline_name, experiment, not always_retrain, f"kdflow schedule {cron!r}")
    remote = d.remote
    name = name or f"{d.pipeline_name} {cron}"
    rid = remote.create_schedule(d.client, host, d.experiment_id, name, cron, d.published, d.parameters)
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


def register(group: click.Group) -> None:
    """Add ``submit`` and ``schedule`` to the ``kdflow`` command group."""
    group.add_command(submit)
    group.add_command(schedule)
