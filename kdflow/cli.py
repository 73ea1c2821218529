"""The ``kdflow`` command line.

Importing this module does not import kfp: only ``run``, ``sweep`` and ``compile`` reach into
pipelines/, and only when they are invoked.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from kdflow import __version__
from kdflow.errors import KdflowError

EXIT_GATE_FAILED = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kdflow")
def main() -> None:
    """kdflow: knowledge-distillation pipelines for Kubeflow."""


def _where_options(command):
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

def _promote_option(command):
    return click.option("--auto-promote", is_flag=True,
                        help="Make the registered student the registry's champion when it passes the gate against the "
                             "current champion (else it keeps registry.alias and waits for `kdflow promote`).")(command)


def _local_inputs(base, data, teacher, workdir, cache_uri, tracking_uri):
    """The run's inputs resolved under the work folder (defaults said on stderr): (config, workdir)."""
    from kdflow.inputs import default_workdir, resolve_inputs
    from kdflow.logs import setup_logging
    from kdflow.redact import refuse_run_inputs

    setup_logging()
    refuse_run_inputs(base, data, teacher, cache_uri, tracking_uri)  # before anything is written
    workdir = (workdir or default_workdir()).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cfg, notes = resolve_inputs(base, workdir, data, teacher, cache_uri, tracking_uri)
    for what, note in notes.items():
        click.echo(f"{what}: {note}", err=True)
    return cfg, workdir


def _run_locally(run_pipeline, workdir: Path, cfg, arguments: dict) -> str:
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


@main.command()
@click.option("--data", metavar="PATH",
              help="Image folder (<class>/<image>, optionally under train/, val/, test/). "
                   "Default: config's data_uri, else scikit-learn's digits.")
@click.option("--teacher", metavar="URI",
              help="Teacher: TorchScript file, state_dict checkpoint (set teacher.arch) or models:/ URI. "
                   "Default: config's teacher_uri, else a teacher is trained first.")
@click.option("--config", "config_path", metavar="FILE",
              help="YAML run config (see `kdflow config`). Default: the built-in digits config.")
@_where_options
@click.option("--skip-unchanged", is_flag=True,
              help="Stop after preprocessing when the data, teacher and config equal those of the registry's "
                   "champion, or of the unpromoted student holding registry.alias (what scheduled runs do).")
@_promote_option
def run(data, teacher, config_path, workdir, cache_uri, tracking_uri, skip_unchanged, auto_promote) -> None:
    """Run the whole pipeline locally (kfp.local) and print a summary.

    Exit status: 0 registered (or nothing changed, with --skip-unchanged), 3 ran but the gate refused
    the student, 1 failed, 2 bad input.
    """
    from kdflow.inputs import load_config
    from kdflow.steps.champion import UNCHANGED_PREFIX
    from kdflow.summary import read_summary
    from kdflow.pipelines.local import run_local

    base = load_config(config_path, embedded=not data)
    cfg, workdir = _local_inputs(base, data, teacher, workdir, cache_uri, tracking_uri)
    run_id = _run_locally(run_local, workdir, cfg, {"config": cfg.to_yaml(), "skip_unchanged": skip_unchanged,
                                                    "auto_promote": auto_promote})
    if run_id.startswith(UNCHANGED_PREFIX):
        click.echo(f"kdflow: nothing trained, {run_id[len(UNCHANGED_PREFIX):]}")
        return
    summary = read_summary(run_id, cfg.tracking_uri)
    click.echo("\n".join(summary.lines()))
    if not summary.registered_version:
        sys.exit(EXIT_GATE_FAILED)


@main.command()
@click.option("--config", "sweep_path", required=True, metavar="FILE",
              help="Sweep file: a base run config, the distill.*/train.*/student.* values to try, grid or random "
                   "(see examples/sweep-digits.yaml).")
@click.option("--data", metavar="PATH",
              help="Image folder, as for `kdflow run`. Default: the base config's data_uri, else "
                   "scikit-learn's digits.")
@click.option("--teacher", metavar="URI",
              help="Teacher, as for `kdflow run`. Default: the base config's teacher_uri, else a teacher is "
                   "trained first.")
@_where_options
@click.option("--dry-run", is_flag=True, help="Print the expanded trials and exit, without running anything.")
@_promote_option
def sweep(sweep_path, data, teacher, workdir, cache_uri, tracking_uri, dry_run, auto_promote) -> None:
    """Try many students against one teacher run (kfp.local); register the best on validation.

    The teacher labels once; every trial distils from the same cached soft labels as a child MLflow
    run; the trial with the best validation metric is evaluated on the test split, gated and
    registered.

    \b
    Example (kd at two temperatures against cross-entropy, on the digits default):
      kdflow sweep --config examples/sweep-digits.yaml --dry-run
      kdflow sweep --config examples/sweep-digits.yaml

    Exit status: 0 registered, 3 ran but the gate refused the winner, 1 failed, 2 bad input.
    """
    from kdflow.sweep import SweepSpec, expand

    spec = SweepSpec.load(sweep_path)
    base = spec.base_config(embedded=not data)
    plan = expand(spec, base)  # every trial checked before anything is written
    if dry_run:
        click.echo("\n".join(plan.table_lines()))
        return

    from kdflow.summary import read_summary
    from kdflow.sweep.summary import read_sweep
    from kdflow.pipelines.local import run_sweep_local

    cfg, workdir = _local_inputs(base, data, teacher, workdir, cache_uri, tracking_uri)
    plan = expand(spec, cfg)
    run_id = _run_locally(run_sweep_local, workdir, cfg, {"config": plan.labelling_config().to_yaml(),
                                                          "trials": plan.to_json(), "auto_promote": auto_promote})
    click.echo("\n".join(read_sweep(run_id, cfg.tracking_uri).lines()))
    summary = read_summary(run_id, cfg.tracking_uri)
    click.echo("\n".join(["kdflow run summary of the winner"] + summary.lines()[1:]))
    if not summary.registered_version:
        sys.exit(EXIT_GATE_FAILED)


@main.command("compile")
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


@main.command()
@click.option("--config", "config_path", metavar="FILE", help="Validate and print this file, resolved.")
@click.option("--digits", is_flag=True, help="Print the embedded default (digits) config instead of the "
                                             "generic defaults.")
@click.option("--schema", is_flag=True, help="Print the JSON Schema of the config instead, for editors "
                                             "(e.g. a YAML language server: completion, hover docs and "
                                             "checks as you type).")
def config(config_path: str | None, digits: bool, schema: bool) -> None:
    """Print a config with every default filled in: a starting point for your own."""
    if schema:
        import json

        from kdflow.schema import config_schema

        click.echo(json.dumps(config_schema(), indent=2))
        return
    from kdflow.inputs import load_config

    click.echo(load_config(config_path, embedded=digits).to_yaml(), nl=False)


@main.command()
@click.option("--layers", "arch", metavar="ARCH",
              help="List ARCH's layers (names for hint pairs) with their output shapes instead.")
@click.option("--image-size", default=32, show_default=True, help="Input size for the shapes listed by --layers.")
@click.option("--classes", default=10, show_default=True, help="Class count for the shapes listed by --layers.")
def models(arch: str | None, image_size: int, classes: int) -> None:
    """List the model architectures (for student.arch and teacher.arch), or one's layers."""
    from kdflow.models import create_model, list_models

    if not arch:
        click.echo("\n".join(list_models()))
        return
    import torch

    from kdflow.models.features import layer_table

    rows = layer_table(create_model(arch, classes), torch.zeros(2, 3, image_size, image_size))
    width = max(len(name) for name, _, _ in rows)
    click.echo(f"# {arch}: layers a hint pair can name (output shape for {image_size}x{image_size} input)")
    for name, kind, shape in rows:
        click.echo(f"{name:{width}s}  {kind:12s}  {list(shape)}")


@main.command()
def methods() -> None:
    """List the distillation methods (for distill.method), each with a one-line description."""
    from kdflow.distillers import describe_distillers

    described = describe_distillers()
    width = max(map(len, described))
    click.echo("\n".join(f"{name:{width}s}  {text}" for name, text in described.items()))


@main.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
def digits(output: Path) -> None:
    """Write scikit-learn's handwritten digits to OUTPUT as an image folder."""
    from kdflow.data.digits import write_digits

    click.echo(write_digits(output))


@main.group()
def bench() -> None:
    """Benchmarks (they print what they measured and write it to a Markdown file)."""


@bench.command("quality")
@click.option("--data", type=click.Path(exists=True, path_type=Path), default=Path("../shared/data/cifar10-jpg.tar.gz"),
              show_default=True, help="CIFAR-10 as JPEG folders (train/<class>, test/<class>): a folder or .tar.gz.")
@click.option("--teacher", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=Path("../shared/models/cifar10-resnet/resnet56-4bfd9763.th"), show_default=True,
              help="The ResNet-56 state_dict checkpoint the teacher is adapted from.")
@click.option("--profile", type=click.Choice(["gpu", "cpu-reduced", "smoke"]), default="cpu-reduced",
              show_default=True, help="gpu: full data, 30 epochs. cpu-reduced: a subset and shorter schedule "
                                      "for 2 CPU cores. smoke: seconds, checks the plumbing only.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated training seeds.")
@click.option("--rows", default="all", show_default=True,
              help="Comma-separated rows to run, or all: ce, kd-plain, kd-views, kd-online, kd-ls, kd-ls-online, "
                   "dkd, dkd-online, dist, dist-online, hint, combined, kd-k3, dkd-k3.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".kdflow/bench"),
              show_default=True, help="Scratch folder: unpacked data, cache, MLflow store, results.json.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/benchmarks.md"),
              show_default=True, help="Markdown file the result section is appended to.")
def bench_quality(data, teacher, profile, seeds, rows, workdir, output) -> None:
    """CIFAR-10: ResNet-56 teacher (adapted) -> ResNet-20 student; ce, KD (plain / replayed views / online),
    KD with logit standardization, DKD, DIST, hint, combined, and KD/DKD with a smaller cached k."""
    from kdflow.bench import quality
    from kdflow.logs import setup_logging

    setup_logging()
    seed_list = tuple(int(s) for s in seeds.split(","))
    row_list = quality.ROWS if rows == "all" else tuple(r.strip() for r in rows.split(","))
    unknown = set(row_list) - set(quality.ROWS)
    if unknown:
        raise click.BadParameter(f"unknown rows {sorted(unknown)}; use {', '.join(quality.ROWS)}", param_hint="--rows")
    results = quality.run(data.resolve(), teacher.resolve(), workdir.resolve(), profile, row_list, seed_list)
    command = "kdflow bench quality " + " ".join(sys.argv[3:])
    text = quality.report(results, command)
    click.echo(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as f:
        f.write(f"\n## Quality, profile {profile} ({time.strftime('%Y-%m-%d')})\n\n{text}\n")
    click.echo(f"appended to {output}")


def _append_section(output: Path, title: str, text: str) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a") as f:
        f.write(f"\n## {title} ({time.strftime('%Y-%m-%d')})\n\n{text}\n")
    click.echo(f"appended to {output}")


@bench.command("scale")
@click.option("--sizes", default="10000,40000,160000", show_default=True,
              help="Comma-separated dataset sizes (generated 64x64 JPEGs, 10 classes); the verdict compares the "
                   "largest with the smallest.")
@click.option("--quick", is_flag=True, help="Sizes 300 and 600 (seconds; checks the plumbing, not the bound).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".kdflow/bench-scale"),
              show_default=True, help="Scratch folder: generated images (kept and reused), datasets, caches, logs.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/benchmarks.md"),
              show_default=True, help="Markdown file the result section is appended to.")
@click.option("--no-write", is_flag=True, help="Print the result only; append nothing to --output.")
def bench_scale(sizes, quick, workdir, output, no_write) -> None:
    """Peak RSS of preprocess, teacher inference and training (each in a fresh process) as the data grows;
    PASS when each grows by less than 25% from the smallest to the largest size. Exit status 1 on a FAIL."""
    from kdflow.bench import scale

    size_list = scale.QUICK_SIZES if quick else tuple(int(s) for s in sizes.split(","))
    if len(size_list) < 2 or any(n < 100 for n in size_list):
        raise click.BadParameter("give at least two sizes of 100 images or more", param_hint="--sizes")
    results = scale.run(workdir.resolve(), tuple(sorted(size_list)), quick)
    text = scale.report(results, "kdflow bench scale " + " ".join(sys.argv[3:]))
    click.echo(text)
    if not no_write:
        _append_section(output, "Scale, quick" if quick else "Scale", text)
    if not quick and not all(scale.verdicts(results).values()):
        sys.exit(1)


@bench.command("throughput")
@click.option("--profile", type=click.Choice(["gpu", "cpu-reduced", "quick"]), default="gpu", show_default=True,
              help="gpu: the issue's sizes on one GPU (ResNet-50 -> ResNet-18 at 224 px, ResNet-56 -> ResNet-20 at "
                   "32 px). cpu-reduced: smaller images and sets for a CPU (ratios only). quick: seconds, plumbing.")
@click.option("--pairs", default="imagenet,cifar", show_default=True,
              help="Comma-separated teacher -> student pairs to measure: imagenet, cifar; none: only the pipeline "
                   "figure.")
@click.option("--cifar", type=click.Path(path_type=Path), default=Path("../shared/data/cifar10-jpg.tar.gz"),
              show_default=True, help="CIFAR-10 JPEG folders or .tar.gz for the pipeline figure (GPU only; skipped "
                                      "when missing).")
@click.option("--cifar-teacher", type=click.Path(path_type=Path),
              default=Path("../shared/models/cifar10-resnet/resnet56-4bfd9763.th"), show_default=True,
              help="ResNet-56 checkpoint the pipeline figure starts from.")
@click.option("--pipeline-epochs", default=100, show_default=True,
              help="Epochs of the CIFAR-10 pipeline figure (`kdflow run`).")
@click.option("--no-pipeline", is_flag=True,
              help="Skip the CIFAR-10 pipeline figure (it runs in the gpu profile only).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".kdflow/bench-throughput"),
              show_default=True, help="Scratch folder: generated images (kept and reused), datasets, caches, logs.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("docs/benchmarks.md"),
              show_default=True, help="Markdown file the result section is appended to.")
@click.option("--no-write", is_flag=True, help="Print the result only; append nothing to --output.")
def bench_throughput(profile, pairs, cifar, cifar_teacher, pipeline_epochs, no_pipeline, workdir, output,
                     no_write) -> None:
    """Images/s of kdflow's training (offline and online KD) and teacher inference against the models' ceilings
    (device-resident synthetic data), measured side by side in one process; plus the CIFAR-10 pipeline wall time."""
    from kdflow.bench import throughput
    from kdflow.logs import setup_logging

    setup_logging()
    pair_list = () if pairs == "none" else tuple(p.strip() for p in pairs.split(","))
    unknown = set(pair_list) - set(throughput.PAIRS)
    if unknown:
        raise click.BadParameter(f"unknown pairs {sorted(unknown)}; use {', '.join(throughput.PAIRS)}",
                                 param_hint="--pairs")
    results = throughput.run(workdir.resolve(), profile, pair_list, cifar.resolve(), cifar_teacher.resolve(),
                             pipeline_epochs, pipeline=not no_pipeline)
    text = throughput.report(results, "kdflow bench throughput " + " ".join(sys.argv[3:]))
    click.echo(text)
    if not no_write:
        _append_section(output, f"Throughput, profile {profile}", text)


from kdflow import cli_cluster  # noqa: E402  (submit, schedule: they import kfp only when they run)
cli_cluster.register(main)
from kdflow import cli_registry  # noqa: E402  (promote, rollback, registry)
cli_registry.register(main)


def entrypoint() -> None:
    from kdflow.logs import install_excepthook

    # Any other exception is a bug, and its traceback quotes what it was given (URIs, a library's
    # error text naming the tracking URL): it propagates (exit status 1; a caller in-process still
    # gets it) and the interpreter prints it through this redacting hook.
    install_excepthook()
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as exc:
        from kdflow.redact import redact_text

        exc.message = redact_text(exc.message)
        exc.show()
        sys.exit(exc.exit_code)
    except KdflowError as exc:
        from kdflow.redact import redact_text  # a message may quote a URI or a library's error text

        click.echo(f"error: {redact_text(exc.problem)}", err=True)
        if exc.fix:
            click.echo(f"  fix: {redact_text(exc.fix)}", err=True)
        sys.exit(2)
