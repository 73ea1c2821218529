"""``kdflow run`` and ``kdflow sweep``: the pipeline on this machine, through kfp.local."""

from __future__ import annotations

import sys

import click

from kdflow.cli.options import EXIT_GATE_FAILED, local_inputs, promote_option, run_locally, where_options


@click.command()
@click.option("--data", metavar="PATH",
              help="Image folder (<class>/<image>, optionally under train/, val/, test/). "
                   "Default: config's data_uri, else scikit-learn's digits.")
@click.option("--teacher", metavar="URI",
              help="Teacher: TorchScript file, state_dict checkpoint (set teacher.arch) or models:/ URI. "
                   "Default: config's teacher_uri, else a teacher is trained first.")
@click.option("--config", "config_path", metavar="FILE",
              help="YAML run config (see `kdflow config`). Default: the built-in digits config.")
@where_options
@click.option("--skip-unchanged", is_flag=True,
              help="Stop after preprocessing when the data, teacher and config equal those of the registry's "
                   "champion, or of the unpromoted student holding registry.alias (what scheduled runs do).")
@promote_option
def run(data, teacher, config_path, workdir, cache_uri, tracking_uri, skip_unchanged, auto_promote) -> None:
    """Run the whole pipeline locally (kfp.local) and print a summary.

    Exit status: 0 registered (or nothing changed, with --skip-unchanged), 3 ran but the gate refused
    the student, 1 failed, 2 bad input.
    """
    from kdflow.config import load_config
    from kdflow.steps.champion import UNCHANGED_PREFIX
    from kdflow.cli.summary import read_summary
    from kdflow.pipelines.local import run_local

    base = load_config(config_path, embedded=not data)
    cfg, workdir = local_inputs(base, data, teacher, workdir, cache_uri, tracking_uri)
    run_id = run_locally(run_local, workdir, cfg, {"config": cfg.to_yaml(), "skip_unchanged": skip_unchanged,
                                                    "auto_promote": auto_promote})
    if run_id.startswith(UNCHANGED_PREFIX):
        click.echo(f"kdflow: nothing trained, {run_id[len(UNCHANGED_PREFIX):]}")
        return
    summary = read_summary(run_id, cfg.tracking_uri)
    click.echo("\n".join(summary.lines()))
    if not summary.registered_version:
        sys.exit(EXIT_GATE_FAILED)


@click.command()
@click.option("--config", "sweep_path", required=True, metavar="FILE",
              help="Sweep file: a base run config, the distill.*/train.*/student.* values to try, grid or random "
                   "(see examples/sweep-digits.yaml).")
@click.option("--data", metavar="PATH",
              help="Image folder, as for `kdflow run`. Default: the base config's data_uri, else "
                   "scikit-learn's digits.")
@click.option("--teacher", metavar="URI",
              help="Teacher, as for `kdflow run`. Default: the base config's teacher_uri, else a teacher is "
                   "trained first.")
@where_options
@click.option("--dry-run", is_flag=True, help="Print the expanded trials and exit, without running anything.")
@promote_option
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

    from kdflow.cli.summary import read_summary
    from kdflow.sweep.summary import read_sweep
    from kdflow.pipelines.local import run_sweep_local

    cfg, workdir = local_inputs(base, data, teacher, workdir, cache_uri, tracking_uri)
    plan = expand(spec, cfg)
    run_id = run_locally(run_sweep_local, workdir, cfg, {"config": plan.labelling_config().to_yaml(),
                                                          "trials": plan.to_json(), "auto_promote": auto_promote})
    click.echo("\n".join(read_sweep(run_id, cfg.tracking_uri).lines()))
    summary = read_summary(run_id, cfg.tracking_uri)
    click.echo("\n".join(["kdflow run summary of the winner"] + summary.lines()[1:]))
    if not summary.registered_version:
        sys.exit(EXIT_GATE_FAILED)
