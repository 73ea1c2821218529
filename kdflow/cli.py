"""The ``kdflow`` command line.

Importing this module does not import kfp: only ``run`` and ``compile`` reach into pipelines/, and
only when they are invoked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kdflow import __version__
from kdflow.errors import KdflowError

EXIT_GATE_FAILED = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdflow")
def main() -> None:
    """kdflow: knowledge-distillation pipelines for Kubeflow."""


@main.command()
@click.option("--data", metavar="PATH",
              help="Image folder (<class>/<image>, optionally under train/, val/, test/). "
                   "Default: config's data_uri, else scikit-learn's digits.")
@click.option("--teacher", metavar="URI",
              help="Teacher: TorchScript file, state_dict checkpoint (set teacher.arch) or models:/ URI. "
                   "Default: config's teacher_uri, else a teacher is trained first.")
@click.option("--config", "config_path", metavar="FILE",
              help="YAML run config (see `kdflow config`). Default: the built-in digits config.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for defaults (data, teacher, cache, MLflow store, pipeline outputs). "
                   "Default: $KDFLOW_HOME, else ./.kdflow.")
@click.option("--cache-uri", metavar="URI", help="Soft-label cache root: folder, file:// or s3://. "
                                                 "Default: WORKDIR/cache.")
@click.option("--tracking-uri", metavar="URI", help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, "
                                                    "else sqlite:///WORKDIR/mlflow.db.")
def run(data, teacher, config_path, workdir, cache_uri, tracking_uri) -> None:
    """Run the whole pipeline locally (kfp.local) and print a summary.

    Exit status: 0 registered, 3 ran but the gate refused the student, 1 failed, 2 bad input.
    """
    from kdflow.inputs import default_workdir, load_config, resolve_inputs
    from kdflow.logs import setup_logging
    from kdflow.summary import read_summary

    setup_logging()
    workdir = (workdir or default_workdir()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    base = load_config(config_path, embedded=not data)
    cfg, notes = resolve_inputs(base, workdir, data, teacher, cache_uri, tracking_uri)
    for what, note in notes.items():
        click.echo(f"{what}: {note}", err=True)

    from pipelines.local import run_local

    try:
        run_id = run_local(str(workdir / "pipeline_runs"), {
            "data_uri": cfg.data_uri, "teacher_uri": cfg.teacher_uri, "config": cfg.to_yaml(),
            "cache_uri": cfg.cache_uri, "tracking_uri": cfg.tracking_uri,
        })
    except RuntimeError as exc:
        raise click.ClickException(f"{exc}\nThe failing task's log above says why.") from None
    summary = read_summary(run_id, cfg.tracking_uri)
    click.echo("\n".join(summary.lines()))
    if not summary.registered_version:
        sys.exit(EXIT_GATE_FAILED)


@main.command("compile")
@click.option("--output", "-o", default="pipeline.yaml", show_default=True, help="Where to write the spec.")
@click.option("--image-prefix", metavar="PREFIX",
              help="Registry/repository prefix for the component images, e.g. ghcr.io/acme. "
                   "Default: the package's own.")
def compile_cmd(output: str, image_prefix: str | None) -> None:
    """Compile the pipeline to a KFP IR YAML for a cluster."""
    from pipelines.local import compile_pipeline, retarget_images

    compile_pipeline(output)
    if image_prefix:
        retarget_images(output, image_prefix)
    click.echo(output)


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Validate and print this file, resolved.")
@click.option("--digits", is_flag=True, help="Print the embedded default (digits) config instead of the "
                                             "generic defaults.")
def config(config_path: str | None, digits: bool) -> None:
    """Print a config with every default filled in: a starting point for your own."""
    from kdflow.inputs import load_config

    click.echo(load_config(config_path, embedded=digits).to_yaml(), nl=False)


@main.command()
def models() -> None:
    """List the model architectures (for student.arch and teacher.arch)."""
    from kdflow.models import list_models

    click.echo("\n".join(list_models()))


@main.command()
def methods() -> None:
    """List the distillation methods (for distill.method)."""
    from kdflow.distillers import list_distillers

    click.echo("\n".join(list_distillers()))


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
def digits(output: Path) -> None:
    """Write scikit-learn's handwritten digits to OUTPUT as an image folder."""
    from kdflow.data.digits import write_digits

    click.echo(write_digits(output))


def entrypoint() -> None:
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KdflowError as exc:
        click.echo(f"error: {exc.problem}", err=True)
        if exc.fix:
            click.echo(f"  fix: {exc.fix}", err=True)
        sys.exit(2)
