"""What the commands share: exit codes, the options of a local run, running a pipeline locally."""

from __future__ import annotations

import time
from pathlib import Path

import click

EXIT_GATE_FAILED = 3  # the run finished, but its student did not pass the gate


def where_options(command):
    """--workdir, --cache-uri and --tracking-uri: where a local run keeps its state (run and sweep)."""
    for option in reversed([
        click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                     help="Folder for defaults (data, teacher, cache, MLflow store, pipeline outputs). "
                          "Default: $KDFLOW_HOME, else ./.kdflow."),
        click.option("--cache-uri", metavar="URI", help="Soft-label cache root: folder, file:// or s3://. "
                                                        "Default: WORKDIR/cache."),
        click.option("--tracking-uri", metavar="URI", help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, "
                                                           "else sqlite:///WORKDIR/mlflow.db."),
    ]):
        command = option(command)
    return command

def promote_option(command):
    return click.option("--auto-promote", is_flag=True,
                        help="Make the registered student the registry's champion when it passes the gate against the "
                             "current champion (else it keeps registry.alias and waits for `kdflow promote`).")(command)


def local_inputs(base, data, teacher, workdir, cache_uri, tracking_uri):
    """The run's inputs resolved under the work folder (defaults said on stderr): (config, workdir)."""
    from kdflow.cli.inputs import default_workdir, resolve_inputs
    from kdflow.util.logs import setup_logging
    from kdflow.util.redact import refuse_run_inputs

    setup_logging()
    refuse_run_inputs(base, data, teacher, cache_uri, tracking_uri)  # before anything is written
    from kdflow.distillers.preflight import check_models

    check_models(base)  # what needs the networks (hint's layer names), before a teacher is trained or run
    workdir = (workdir or default_workdir()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, notes = resolve_inputs(base, workdir, data, teacher, cache_uri, tracking_uri)
    for what, note in notes.items():
        click.echo(f"{what}: {note}", err=True)
    return cfg, workdir


def run_locally(run_pipeline, workdir: Path, cfg, arguments: dict) -> str:
    """Run a pipeline through kfp.local with the config's inputs plus ``arguments``: a line per step
    on stderr, the whole output in WORKDIR/logs/ (its path said at the end); a failed task is a
    ClickException (exit 1) pointing at its log."""
    log_file = workdir / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"
    click.echo("kdflow: running the pipeline locally, step by step:", err=True)
    try:
        return run_pipeline(str(workdir / "pipeline_runs"), {
            "data_uri": cfg.data_uri, "teacher_uri": cfg.teacher_uri, "cache_uri": cfg.cache_uri,
            "tracking_uri": cfg.tracking_uri, **arguments}, log_file=str(log_file))
    except RuntimeError as exc:
        raise click.ClickException(f"{exc}\nThe failing step's log is above; all of it: {log_file}") from None
    finally:
        click.echo(f"kdflow: full log of every step: {log_file}", err=True)




def append_section(output: Path, title: str, text: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as f:
        f.write(f"\n## {title} ({time.strftime('%Y-%m-%d')})\n\n{text}\n")
    click.echo(f"appended to {output}")
