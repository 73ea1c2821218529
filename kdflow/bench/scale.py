"""The scale benchmark: does memory stay bounded as the dataset grows?

For each size N (default 10k, 40k, 160k generated 64x64 JPEGs in 10 class folders) three steps run,
each in a FRESH process (``python -m kdflow.bench.scale_worker``), through the public step functions:

    preprocess   image folder -> shards + manifest (data.image_size 64, the default shard size)
    teacher      an untrained ResNet-8 labels the plain view and one augmented view (cache miss)
    train        one epoch of convnet_xs, offline KD from the cache, batch 256, on the CPU

The parent measures each child's peak resident set size with ``os.wait4`` (``ru_maxrss``: on Linux
in KiB; the maximum of that process and of any descendant it waited for, never a sum). Because a
process pool's workers are separate processes, the parent also samples the whole process tree's
summed RSS every 50 ms ("tree peak, sampled"): a sampled figure can miss a short spike, so the verdict
is on ``ru_maxrss``; the sampled one is printed beside it.

Criterion: each step's peak RSS grows by less than 25% from the smallest to the largest N.
Small sizes (``--quick``) are dominated by the interpreter and torch; they check the plumbing only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

STEPS = ("preprocess", "teacher", "train")
DEFAULT_SIZES = (10_000, 40_000, 160_000)
QUICK_SIZES = (300, 600)
MAX_GROWTH = 0.25  # the bound: peak RSS at the largest N < 1.25 x that at the smallest
IMAGE_SIZE = 64
CLASSES = 10
TEACHER_ARCH = "resnet8"


def config_yaml(quick: bool = False) -> str:
    """The run config of every size. Small val/test fractions: the criterion is about the train split
    growing; the test split is labelled and checked against the floor by the teacher step."""
    import yaml

    return yaml.safe_dump({
        "data": {"image_size": IMAGE_SIZE, "val_fraction": 0.02, "test_fraction": 0.02, "seed": 0},
        "teacher": {"top_k": 10, "batch_size": 256},
        "augment": {"crop": "pad", "padding": 4, "flip": True, "views": 1, "seed": 0},
        "student": {"arch": "convnet_xs"},
        "train": {"epochs": 1, "batch_size": 32 if quick else 256, "lr": 0.05, "seed": 0, "device": "cpu"},
        "distill": {"method": "kd", "options": {"temperature": 4.0, "alpha": 0.9}},
        # An untrained teacher: the floor would (rightly) stop it; memory is what is measured here.
        "gate": {"min_accuracy": 0.0, "max_drop": 1.0, "min_teacher_accuracy": 0.0},
        "evaluate": {"export": []},
        "registry": {"model_name": "bench-scale", "experiment": "kdflow-bench-scale"},
    }, sort_keys=False)


@dataclass(frozen=True)
class Measurement:
    step: str
    n: int
    peak_rss_kib: int  # ru_maxrss of the step's process (os.wait4)
    tree_peak_kib: int  # the largest summed RSS of the process and its descendants, sampled
    wall_s: float
    result: dict


def _tree_rss_kib(root: int) -> int:
    """Summed VmRSS of ``root`` and its descendants (read from /proc; 0 where /proc is missing)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # the process ended while we looked
            continue
        pid = int(entry)
        parents[pid] = int(fields.get("PPid", "0").strip())
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    tree, frontier = {root}, [root]
    while frontier:
        children = [p for p, pp in parents.items() if pp in frontier and p not in tree]
        tree.update(children)
        frontier = children
    return sum(rss.get(p, 0) for p in tree)


def run_step(step: str, n: int, args: list[str], log_file: Path) -> Measurement:
    """Run one worker step in a fresh interpreter; its peak RSS from ``os.wait4``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "kdflow.bench.scale_worker", step, *args]
    start = time.perf_counter()
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        peak_tree = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak_tree[0] = max(peak_tree[0], _tree_rss_kib(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            done.set()
            sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    wall = time.perf_counter() - start
    text = log_file.read_text()
    if proc.returncode != 0:
        from kdflow.util.errors import KdflowError

        tail = "\n".join(text.splitlines()[-20:])
        raise KdflowError(f"the {step} step failed (exit {proc.returncode}); the end of {log_file}:\n{tail}",
                          "fix the step (its whole log is in that file) and run the benchmark again")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    return Measurement(step, n, int(usage.ru_maxrss), max(peak_tree[0], int(usage.ru_maxrss)), wall, result)


def run(workdir: Path, sizes: tuple[int, ...] = DEFAULT_SIZES, quick: bool = False) -> dict:
    """Every step at every size; returns the results (also written to workdir/scale-results.json)."""
    from kdflow.bench.synthetic import image_folder, write_teacher

    workdir.mkdir(parents=True, exist_ok=True)
    teacher = write_teacher(workdir / f"teacher-{TEACHER_ARCH}.pt", TEACHER_ARCH, CLASSES)
    config = workdir / ("config-quick.yaml" if quick else "config.yaml")
    config.write_text(config_yaml(quick))
    measurements: list[Measurement] = []
    for n in sizes:
        t0 = time.perf_counter()
        images = image_folder(workdir / "images", n, IMAGE_SIZE, CLASSES)
        print(f"{n} images ready in {images} ({time.perf_counter() - t0:.0f} s)", flush=True)
        work = workdir / f"n{n}"
        common = [f"--work={work}", f"--config={config}"]
        extra = {"preprocess": [f"--images={images}"], "teacher": [f"--teacher={teacher}"], "train": []}
        for step in STEPS:
            m = run_step(step, n, common + extra[step], work / f"{step}.log")
            measurements.append(m)
            print(f"{step:10s} N={n:>7d}  peak RSS {m.peak_rss_kib / 1024:8.1f} MiB  (tree, sampled "
                  f"{m.tree_peak_kib / 1024:8.1f} MiB)  {m.wall_s:6.1f} s", flush=True)
    results = {"sizes": list(sizes), "quick": quick, "machine": machine(), "image_size": IMAGE_SIZE,
               "config": config.read_text(), "measurements": [asdict(m) for m in measurements]}
    (workdir / "scale-results.json").write_text(json.dumps(results, indent=2))
    return results


def growth(results: dict) -> dict[str, float]:
    """Per step: peak RSS at the largest size over that at the smallest, minus 1."""
    out = {}
    for step in STEPS:
        rows = sorted((m for m in results["measurements"] if m["step"] == step), key=lambda m: m["n"])
        if rows:
            out[step] = rows[-1]["peak_rss_kib"] / rows[0]["peak_rss_kib"] - 1
    return out


def verdicts(results: dict) -> dict[str, bool]:
    return {step: g < MAX_GROWTH for step, g in growth(results).items()}


def table(results: dict) -> list[str]:
    lines = ["| step | N | peak RSS (MiB) | growth vs smallest N | tree peak, sampled (MiB) | wall (s) |",
             "|---|---|---|---|---|---|"]
    smallest: dict[str, int] = {}
    for m in sorted(results["measurements"], key=lambda m: (STEPS.index(m["step"]), m["n"])):
        base = smallest.setdefault(m["step"], m["peak_rss_kib"])
        lines.append(f"| {m['step']} | {m['n']} | {m['peak_rss_kib'] / 1024:.1f} | "
                     f"{100 * (m['peak_rss_kib'] / base - 1):+.1f}% | {m['tree_peak_kib'] / 1024:.1f} | "
                     f"{m['wall_s']:.1f} |")
    return lines


def report(results: dict, command: str) -> str:
    sizes = results["sizes"]
    g, ok = growth(results), verdicts(results)
    lines = [
        f"Machine: {results['machine']}.",
        f"Command: `{command}`",
        f"Data: {', '.join(str(n) for n in sizes)} generated {results['image_size']}x{results['image_size']} JPEGs "
        f"in {CLASSES} class folders (2% val, 2% test); teacher an untrained {TEACHER_ARCH} labelling the plain "
        "view and 1 augmented view; training 1 epoch of convnet_xs, offline KD, on the CPU.",
        "",
        *table(results),
        "",
    ]
    for step in STEPS:
        if step in g:
            lines.append(f"- {step}: {'PASS' if ok[step] else 'FAIL'}: peak RSS grows {100 * g[step]:+.1f}% from "
                         f"N = {min(sizes)} to N = {max(sizes)} (limit: less than {100 * MAX_GROWTH:.0f}%)")
    if results["quick"]:
        lines.append("Quick sizes: the interpreter and torch dominate these figures; the verdicts say nothing "
                     "about bounded memory (run the default sizes for that).")
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / 2**20
        mem_text = f", {mem:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem_text = ""
    import torch

    return (f"{cpu}, {len(os.sched_getaffinity(0))} CPUs{mem_text}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")
