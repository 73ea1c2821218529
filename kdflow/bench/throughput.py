"""The throughput benchmark: how close does kdflow come to what the models allow, on one card?

For each teacher -> student pair, in one process, side by side:

    (a) ceiling       a cross-entropy training step of the student on synthetic images already on the
                      device (bf16 autocast, channels_last and a fused SGD on CUDA), same batch
    (b) kdflow        training from preprocessed shards on local disk, offline KD from the cache, through
                      the distillation step (``run_distillation`` -> ``fit``); steady state: the epochs after
                      the first, from the MLflow epoch-metric timestamps
    (c) online KD     the same step with the teacher run on every batch (``distill.teacher: online``)
    (d) labelling     teacher inference end to end (``run_teacher_inference``: shards in, cache entry out,
                      cache miss) against its ceiling: a forward of the teacher on device-resident synthetic
                      images at the same batch, in full fp32 as the step computes (cached labels must not
                      depend on the device's low-precision kernels)

Pairs: ``imagenet`` ResNet-50 -> ResNet-18 at 224 px with 1000 classes (an ImageNet-1k head and a top-10
soft-label row of 1000, as users would cache), ``cifar`` ResNet-56 -> ResNet-20 at 32 px, 10 classes. The
models are untrained and the images generated: what is measured is images per second, not accuracy.
And (e) the CIFAR-10 pipeline figure: ``kdflow run`` on ../shared's CIFAR-10 with the ResNet-56
checkpoint, wall time from image folder to registered model with its test accuracy (GPU only).

Absolute figures mean something only on a GPU; on the CPU (profiles cpu-reduced and quick, smaller
images and sets) only the ratios are reported, labelled "CPU, reduced".
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

PAIRS = {"imagenet": ("resnet50", "resnet18"), "cifar": ("resnet56", "resnet20")}


@dataclass(frozen=True)
class Sizes:
    image_size: int
    classes: int
    images: int  # generated, before the val/test split
    batch: int  # training batch (the ceiling uses the same)
    teacher_batch: int  # inference batch (the ceiling uses the same)
    epochs: int  # >= 2: the first epoch (start-up, autotuning) is left out of the steady state
    views: int  # augmented teacher views cached for replay
    ceiling_steps: int  # timed steps per repeat of a ceiling


PROFILES = {
    "gpu": {"imagenet": Sizes(224, 1000, 16_000, 256, 1024, 3, 1, 30),
            "cifar": Sizes(32, 10, 50_000, 512, 4096, 3, 1, 50)},
    "cpu-reduced": {"imagenet": Sizes(64, 100, 1_500, 32, 128, 2, 1, 3),
                    "cifar": Sizes(32, 10, 6_000, 128, 512, 2, 1, 5)},
    "quick": {"imagenet": Sizes(32, 10, 48, 8, 16, 2, 1, 1), "cifar": Sizes(32, 10, 48, 8, 16, 2, 1, 1)},
}
REPEATS = 5  # timed windows per ceiling; the median is reported


def pair_config(pair: str, s: Sizes, online: bool = False) -> dict:
    student = PAIRS[pair][1]
    crop = {"crop": "resized", "flip": True} if s.image_size >= 64 else {"crop": "pad", "padding": 4, "flip": True}
    return {
        # A small val split: validation runs every epoch and is not what (b) measures.
        "data": {"image_size": s.image_size, "val_fraction": 0.02, "test_fraction": 0.05, "seed": 0,
                 "resize": "squash"},
        "teacher": {"top_k": 10, "batch_size": s.teacher_batch},
        "augment": {**crop, "views": s.views, "seed": 0},
        "student": {"arch": student},
        "train": {"epochs": s.epochs, "batch_size": s.batch, "lr": 0.05, "seed": 0, "warmup_epochs": 0},
        "distill": {"method": "kd", "options": {"temperature": 4.0, "alpha": 0.9},
                    "teacher": "online" if online else "offline"},
        "gate": {"min_accuracy": 0.0, "max_drop": 1.0, "min_teacher_accuracy": 0.0},
        "evaluate": {"export": [], "latency_runs": 5},
        "registry": {"model_name": f"bench-throughput-{pair}", "experiment": "kdflow-bench-throughput"},
    }


def _yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_step(fn, steps: int, device: torch.device, warmup: int = 3) -> float:
    """Median over REPEATS windows of ``steps`` calls; CUDA events on a GPU, the host clock on a CPU."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(REPEATS):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000 / steps)
        else:
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def _synthetic_u8(n: int, size: int, device: torch.device) -> torch.Tensor:
    # Random pixels, never zeros (zeros can run faster than real data): uint8 [n, size, size, 3].
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g).to(device)


def student_ceiling(arch: str, s: Sizes, device: torch.device) -> float:
    """Images/s of a CE training step of the bare student on device-resident data (a)."""
    from kdflow.models import create_model

    torch.manual_seed(0)
    net = create_model(arch, s.classes).to(device)
    cuda = device.type == "cuda"
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, **({"fused": True} if cuda else {}))
    # Two batches alternate, so a cache does not hold the one input: float [B, 3, H, W], normalised-ish.
    xs = [(_synthetic_u8(s.batch, s.image_size, device).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
          for _ in range(2)]
    if cuda:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    ys = [torch.randint(0, s.classes, (s.batch,), device=device) for _ in range(2)]
    state = {"i": 0}

    def step() -> None:
        i = state["i"] = (state["i"] + 1) % 2
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(net(xs[i]), ys[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    net.train()
    return s.batch / _seconds_per_step(step, s.ceiling_steps, device)


def teacher_ceiling(arch: str, s: Sizes, device: torch.device) -> float:
    """Images/s of the teacher's forward on device-resident data, full fp32 as the step runs it (d)."""
    from kdflow.models import Classifier, create_model
    from kdflow.training.batches import to_float_images
    from kdflow.training.device import full_fp32

    torch.manual_seed(0)
    model = Classifier(create_model(arch, s.classes), (0.5,) * 3, (0.25,) * 3).to(device).eval()
    xs = [_synthetic_u8(s.teacher_batch, s.image_size, device) for _ in range(2)]
    state = {"i": 0}

    @torch.no_grad()
    def step() -> None:
        state["i"] = (state["i"] + 1) % 2
        with full_fp32():
            model(to_float_images(xs[state["i"]]))

    return s.teacher_batch / _seconds_per_step(step, max(1, s.ceiling_steps // 3), device)


def _steady_images_per_s(run_id: str, tracking_uri: str, train_images: int, batch: int) -> float | None:
    """Training images/s over the epochs after the first, from the epoch metrics' MLflow timestamps."""
    from mlflow.tracking import MlflowClient

    history = sorted(MlflowClient(tracking_uri).get_metric_history(run_id, "train_loss"), key=lambda m: m.step)
    if len(history) < 2:
        return None
    seconds = (history[-1].timestamp - history[0].timestamp) / 1000
    per_epoch = (train_images // batch) * batch  # fit drops the last partial batch
    return per_epoch * (len(history) - 1) / seconds if seconds > 0 else None


def measure_pair(pair: str, s: Sizes, workdir: Path, device: torch.device) -> dict:
    from kdflow.bench.synthetic import image_folder, write_teacher
    from kdflow.steps.distill import run_distillation
    from kdflow.steps.preprocess import run_preprocess
    from kdflow.steps.teacher import run_teacher_inference

    teacher_arch, student_arch = PAIRS[pair]
    work = workdir / f"{pair}-{s.image_size}px"
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"pair": pair, "teacher": teacher_arch, "student": student_arch, "sizes": asdict(s)}
    images = image_folder(workdir / "images", s.images, s.image_size, s.classes)
    teacher = write_teacher(work / f"teacher-{teacher_arch}-{s.classes}.pt", teacher_arch, s.classes)
    cfg = pair_config(pair, s)
    dataset = work / "dataset"
    shutil.rmtree(dataset, ignore_errors=True)
    t0 = time.perf_counter()
    counts = run_preprocess(str(images), _yaml(cfg), str(dataset))["counts"]
    out["preprocess_images_per_s"] = s.images / (time.perf_counter() - t0)
    out["counts"] = counts
    print(f"[{pair}] preprocessed {counts} ({out['preprocess_images_per_s']:.0f} images/s)", flush=True)

    out["teacher_ceiling"] = teacher_ceiling(teacher_arch, s, device)
    cache, ref = work / "cache", work / "ref"
    shutil.rmtree(cache, ignore_errors=True)
    _sync(device)
    t0 = time.perf_counter()
    run_teacher_inference(str(dataset), str(teacher), _yaml(cfg), str(cache), str(ref))
    _sync(device)
    labelled = counts.get("train", 0) * (1 + s.views) + counts.get("val", 0) + counts.get("test", 0)
    out["teacher_e2e"] = labelled / (time.perf_counter() - t0)
    print(f"[{pair}] teacher inference {out['teacher_e2e']:.0f} views/s end to end, ceiling "
          f"{out['teacher_ceiling']:.0f} images/s", flush=True)

    out["student_ceiling"] = student_ceiling(student_arch, s, device)
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    for mode, online in (("offline", False), ("online", True)):
        model = work / f"model-{mode}"
        shutil.rmtree(model, ignore_errors=True)
        t0 = time.perf_counter()
        trained = run_distillation(str(dataset), str(ref), _yaml(pair_config(pair, s, online)), str(model), tracking)
        out[f"{mode}_step_s"] = time.perf_counter() - t0
        out[mode] = _steady_images_per_s(trained["run_id"], tracking, counts.get("train", 0), s.batch)
        print(f"[{pair}] kdflow {mode} KD: {out[mode] or 0:.0f} images/s steady state (step "
              f"{out[f'{mode}_step_s']:.0f} s in all); student ceiling {out['student_ceiling']:.0f}", flush=True)
    return out


def pipeline_figure(cifar: Path, teacher: Path, workdir: Path, epochs: int, device: torch.device) -> dict:
    """(e): ``kdflow run`` from the CIFAR-10 folder to a registered model; skipped without a GPU or data."""
    if device.type != "cuda":
        return {"skipped": "no GPU: 100 epochs of CIFAR-10 are a GPU figure"}
    if not cifar.exists() or not teacher.exists():
        return {"skipped": f"{cifar if not cifar.exists() else teacher} is missing (../shared is not in this clone)"}
    import dataclasses

    from kdflow.bench import quality

    profile = dataclasses.replace(quality.PROFILES["gpu"], epochs=epochs, seeds=(0,))
    folder = quality.image_folder(cifar, workdir, profile)
    config = workdir / "pipeline.yaml"
    config.write_text(yaml.safe_dump(quality.row_config("kd-views", profile, 0), sort_keys=False))
    run_dir = workdir / "pipeline-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-c", "from kdflow.cli import entrypoint; entrypoint()", "run", "--data", str(folder),
           "--teacher", str(teacher), "--config", str(config), "--workdir", str(run_dir)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (workdir / "pipeline.log").write_text(proc.stdout + proc.stderr)
    top1 = re.search(r"student top-1 \(test\)\s+([0-9.]+)%", proc.stdout)
    return {"wall_s": wall, "exit": proc.returncode, "epochs": epochs,
            "test_top1": float(top1.group(1)) / 100 if top1 else None, "log": str(workdir / "pipeline.log")}


def run(workdir: Path, profile: str, pairs: tuple[str, ...] = tuple(PAIRS), cifar: Path | None = None,
        cifar_teacher: Path | None = None, pipeline_epochs: int = 100, pipeline: bool = True) -> dict:
    from kdflow.bench.quality import _device_card
    from kdflow.training.device import resolve_device

    device = resolve_device("auto")
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"profile": profile, "device": _device_card(), "gpu": device.type == "cuda",
                     "torch": torch.__version__, "pairs": {}}
    for pair in pairs:
        results["pairs"][pair] = measure_pair(pair, PROFILES[profile][pair], workdir, device)
        (workdir / "throughput-results.json").write_text(json.dumps(results, indent=2))
    if not pipeline:
        results["pipeline"] = {"skipped": "not asked for (--no-pipeline)"}
    elif profile == "gpu" and cifar is not None and cifar_teacher is not None:
        results["pipeline"] = pipeline_figure(cifar, cifar_teacher, workdir, pipeline_epochs, device)
    else:
        results["pipeline"] = {"skipped": f"profile {profile}: the pipeline figure is part of the gpu profile only"}
    (workdir / "throughput-results.json").write_text(json.dumps(results, indent=2))
    return results


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def _rate(v: float | None, gpu: bool) -> str:
    return f"{v:,.0f}" if v and gpu else "-"


def table(results: dict) -> list[str]:
    gpu = results["gpu"]
    lines = ["| pair | px | student ceiling (img/s) | kdflow offline KD | offline / ceiling | online KD "
             "| online / offline | teacher ceiling (img/s) | teacher inference e2e (views/s) | e2e / ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["pairs"].values():
        lines.append(
            f"| {r['teacher']} -> {r['student']} | {r['sizes']['image_size']} | {_rate(r['student_ceiling'], gpu)} | "
            f"{_rate(r['offline'], gpu)} | {_ratio(r['offline'], r['student_ceiling'])} | {_rate(r['online'], gpu)} | "
            f"{_ratio(r['online'], r['offline'])} | {_rate(r['teacher_ceiling'], gpu)} | "
            f"{_rate(r['teacher_e2e'], gpu)} | {_ratio(r['teacher_e2e'], r['teacher_ceiling'])} |")
    return lines


def report(results: dict, command: str) -> str:
    gpu = results["gpu"]
    where = results["device"] if gpu else f"{results['device']} (CPU, reduced: ratios only, no absolute figures)"
    sizes = "; ".join(f"{p}: {r['sizes']['images']} images of {r['sizes']['image_size']} px, {r['sizes']['classes']} "
                      f"classes, batch {r['sizes']['batch']}, teacher batch {r['sizes']['teacher_batch']}, "
                      f"{r['sizes']['epochs']} epochs, {r['sizes']['views']} cached view(s)"
                      for p, r in results["pairs"].items())
    pipe = results.get("pipeline", {})
    if "skipped" in pipe:
        pipe_line = f"CIFAR-10 pipeline figure: skipped ({pipe['skipped']})."
    else:
        acc = f"{100 * pipe['test_top1']:.2f}%" if pipe.get("test_top1") is not None else "n/a"
        pipe_line = (f"CIFAR-10 pipeline figure: `kdflow run`, ResNet-56 checkpoint -> ResNet-20, {pipe['epochs']} "
                     f"epochs: {pipe['wall_s'] / 60:.1f} min from image folder to registered model (exit "
                     f"{pipe['exit']}), student test top-1 {acc}.")
    return "\n".join([
        f"Device: {where}; torch {results['torch']}.",
        f"Command: `{command}`",
        f"Sizes: {sizes}. Models untrained, images generated (random 8x8 colour grids upsampled).",
        "",
        *table(results),
        "",
        "Ceilings: the student's cross-entropy step on device-resident synthetic images (bf16 autocast, "
        "channels_last, fused SGD on CUDA); the teacher's fp32 forward on device-resident images at the "
        "inference batch. kdflow offline/online: the distillation step's steady state (epochs after the first, "
        "validation included). Teacher inference e2e: output views (train x (1 + views), val, test) over the "
        "step's wall time on a cache miss.",
        pipe_line,
    ])
