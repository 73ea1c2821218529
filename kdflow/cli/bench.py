"""``kdflow bench``: the quality, scale and throughput benchmarks (docs/benchmarks.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from kdflow.cli.options import append_section


@click.group()
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
    from kdflow.util.logs import setup_logging

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
        append_section(output, "Scale, quick" if quick else "Scale", text)
    if not quick and not all(scale.verdicts(results).values()):
        sys.exit(1)


@bench.command("throughput")
@click.option("--profile", type=click.Choice(["gpu", "cpu-reduced", "quick"]), default="gpu", show_default=True,
              help="gpu: the full sizes on one GPU (ResNet-50 -> ResNet-18 at 224 px, ResNet-56 -> ResNet-20 at "
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
    from kdflow.util.logs import setup_logging

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
        append_section(output, f"Throughput, profile {profile}", text)
