"""The quality benchmark: does distillation buy accuracy, which method buys the most, and what does the
offline cache cost?

CIFAR-10 (the shared JPEG folders), ResNet-56 teacher adapted from the shared checkpoint, ResNet-20
student from scratch, one schedule for every row:

    ce            cross-entropy with augmentation (crop + flip): the baseline every row is held to
    kd-plain      KD from the cached plain view, no augmentation (kdflow before multi-view replay)
    kd-views      KD offline, V augmented views labelled once and replayed
    kd-online     KD with the teacher in the loop on the same augmented batches
    kd-ls[-online]    KD on standardized logits (Sun et al. 2024), offline / online
    dkd[-online]      Decoupled KD (Zhao et al. 2022), offline / online
    dist[-online]     DIST (Huang et al. 2022), offline / online
    hint          FitNets hint, teacher layer2 -> student layer2 (online: it reads features)
    combined      KD + hint under global weights (online)
    kd-k3, dkd-k3 as kd-views and dkd with only the top 3 of the 10 logits cached (the rest modelled)

Each row runs once per seed through the library steps (adapt, teacher inference, distillation,
evaluation), so it measures what the pipeline does. Teacher labelling is timed apart from training:
the cache is filled once and reused by every later seed, run and student.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import statistics
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdflow.config import Config

KD = {"method": "kd", "options": {"temperature": 4.0, "alpha": 0.9}}
# Sun et al.'s CIFAR recipe for KD with standardized logits uses T = 2 (and a 9x KD weight, which
# alpha cannot express: the mix is kept at KD's 0.9 / 0.1 here).
KD_LS = {"method": "kd", "options": {"temperature": 2.0, "alpha": 0.9, "logit_standardization": True}}
DIST = {"method": "dist", "options": {"beta": 2.0, "gamma": 2.0, "temperature": 4.0}}
# FitNets at the middle stage (mdistiller's FitNet: hint layer 2, feature weight 100): both 32 x 16 x 16.
PAIRS = [{"teacher": "layer2", "student": "layer2", "weight": 100.0}]
HINT = {"method": "hint", "options": {"pairs": PAIRS, "ce_weight": 1.0}}


def _dkd(profile: "Profile") -> dict:
    # The paper warms DKD up over 20 of 240 epochs; the same share of this schedule.
    warmup = min(max(1, round(profile.epochs * 20 / 240)), profile.epochs - 1)
    return {"method": "dkd", "options": {"alpha": 1.0, "beta": 8.0, "temperature": 4.0, "warmup_epochs": warmup}}


def _combined(profile: "Profile") -> dict:
    # kd-online's mix (0.1 CE + 0.9 KD) plus half the hint row's feature term.
    return {"method": "combined", "options": {"weights": {"kd": 0.9, "hint": 0.5}, "ce_weight": 0.1,
                                              "methods": {"kd": KD["options"], "hint": HINT["options"]}}}


def _online(distill: dict) -> dict:
    return {**distill, "teacher": "online"}


# row -> (distill section for a profile, augmentation on, top_k)
ROW_SPECS = {
    "ce": (lambda p: {"method": "ce"}, True, 10),
    "kd-plain": (lambda p: KD, False, 10),
    "kd-views": (lambda p: KD, True, 10),
    "kd-online": (lambda p: _online(KD), True, 10),
    "kd-ls": (lambda p: KD_LS, True, 10),
    "kd-ls-online": (lambda p: _online(KD_LS), True, 10),
    "dkd": (_dkd, True, 10),
    "dkd-online": (lambda p: _online(_dkd(p)), True, 10),
    "dist": (lambda p: DIST, True, 10),
    "dist-online": (lambda p: _online(DIST), True, 10),
    "hint": (lambda p: HINT, True, 10),
    "combined": (_combined, True, 10),
    "kd-k3": (lambda p: KD, True, 3),
    "dkd-k3": (_dkd, True, 3),
}
ROWS = tuple(ROW_SPECS)


@dataclass(frozen=True)
class Profile:
    train_per_class: int | None  # None: the whole train split (5,000 per class)
    test_per_class: int | None  # None: the whole test split (1,000 per class)
    epochs: int
    adapt_epochs: int
    views: int
    seeds: tuple[int, ...] = (0, 1, 2)
    batch_size: int = 128
    lr: float = 0.1
    throughput_batch: int = 64  # evaluate.throughput_batch: the cost measurement's batch (its figures are not read)


PROFILES = {
    # The full benchmark: the full data, 30 epochs, for a GPU.
    "gpu": Profile(train_per_class=None, test_per_class=None, epochs=30, adapt_epochs=5, views=16),
    # A stated subset and shorter schedule for 2 CPU cores: about 100 s per offline row and seed,
    # about 200 s per online one (ce, kd-plain, kd-views, kd-online: about half an hour for 3 seeds).
    "cpu-reduced": Profile(train_per_class=300, test_per_class=100, epochs=18, adapt_epochs=3, views=8,
                           batch_size=64, lr=0.05),
    # Seconds, not quality: checks the benchmark's plumbing (the tests run it on generated data).
    "smoke": Profile(train_per_class=12, test_per_class=6, epochs=1, adapt_epochs=1, views=2, seeds=(0,),
                     batch_size=8, lr=0.05, throughput_batch=8),
}


def row_config(row: str, profile: Profile, seed: int, teacher_arch: str = "resnet56") -> dict:
    make_distill, augmented, top_k = ROW_SPECS[row]
    augment = {"crop": "pad", "padding": 4, "flip": True, "views": profile.views, "seed": 0}
    if not augmented:
        augment = {"crop": "none", "flip": False, "views": 0}
    distill = make_distill(profile)
    return {
        "data": {"image_size": 32, "val_fraction": 0.05, "seed": 0},
        "teacher": {"arch": teacher_arch, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                    "top_k": top_k, "batch_size": 500, "adapt_epochs": profile.adapt_epochs, "adapt_lr": 0.01},
        "augment": augment,
        "student": {"arch": "resnet20"},
        "train": {"epochs": profile.epochs, "batch_size": profile.batch_size, "lr": profile.lr,
                  "weight_decay": 5e-4, "warmup_epochs": min(1, profile.epochs - 1), "seed": seed},
        "distill": distill,
        # The benchmark measures quality: nothing is gated, and only accuracy is read back.
        "gate": {"min_accuracy": 0.0, "max_drop": 1.0, "min_teacher_accuracy": 0.0},
        "evaluate": {"export": [], "latency_runs": 5, "throughput_batch": profile.throughput_batch},
        "registry": {"model_name": "bench-student", "experiment": "kdflow-bench-quality"},
    }


def image_folder(source: Path, workdir: Path, profile: Profile) -> Path:
    """The CIFAR-10 folder (a tarball is unpacked once), cut to the profile's subset by file name."""
    if source.is_file():
        unpacked = workdir / "cifar10-jpg"
        if not (unpacked / "train").is_dir():
            with tarfile.open(source) as tar:
                # The "data" filter refuses links and paths leaving the folder (Python 3.10.12+).
                safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
                tar.extractall(unpacked, **safe)
        source = unpacked
    if profile.train_per_class is None and profile.test_per_class is None:
        return source
    subset = workdir / f"cifar10-{profile.train_per_class}-{profile.test_per_class}"
    if not subset.is_dir():
        tmp = subset.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for split, n in (("train", profile.train_per_class), ("test", profile.test_per_class)):
            for class_dir in sorted((source / split).iterdir()):
                (tmp / split / class_dir.name).mkdir(parents=True)
                for f in sorted(class_dir.iterdir())[:n]:
                    try:  # a hard link costs no space; another filesystem needs a copy
                        os.link(f, tmp / split / class_dir.name / f.name)
                    except OSError:
                        shutil.copy2(f, tmp / split / class_dir.name / f.name)
        tmp.rename(subset)
    return subset


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def run(data: Path, teacher: Path, workdir: Path, profile_name: str, rows: tuple[str, ...] = ROWS,
        seeds: tuple[int, ...] | None = None, teacher_arch: str = "resnet56") -> dict:
    """Run every row for every seed; returns the raw results (also written to workdir/results.json)."""
    from kdflow.steps.adapt import run_adaptation
    from kdflow.steps.distill import run_distillation
    from kdflow.steps.evaluate import run_evaluation
    from kdflow.steps.preprocess import run_preprocess
    from kdflow.steps.teacher import run_teacher_inference

    profile = dataclasses.replace(PROFILES[profile_name], **({"seeds": seeds} if seeds else {}))
    workdir.mkdir(parents=True, exist_ok=True)
    folder = image_folder(data, workdir, profile)
    cache, tracking = str(workdir / "cache"), f"sqlite:///{workdir / 'mlflow.db'}"
    base = Config.from_dict(row_config("kd-views", profile, profile.seeds[0], teacher_arch))
    dataset_dir = workdir / "dataset"
    shutil.rmtree(dataset_dir, ignore_errors=True)
    prepared, t_prep = _timed(run_preprocess, str(folder), base.to_yaml(), str(dataset_dir))
    adapted, t_adapt = _timed(run_adaptation, str(dataset_dir), str(teacher), base.to_yaml(), cache)
    results: dict = {"profile": dataclasses.asdict(profile), "rows": {}, "counts": prepared["counts"],
        "preprocess_s": t_prep, "adapt_s": t_adapt,
        "adaptation": adapted, "device": _device_card(), "torch": torch.__version__,
        "teacher_arch": teacher_arch, "teacher_file": teacher.name, "labelling": {}}
    # Create the MLflow store and experiment now, so the first row's time does not include it.
    from kdflow.registry import tracking as mlflow_tracking

    mlflow_tracking.experiment_id(base.registry.experiment, mlflow_tracking.use_tracking(tracking))
    # Label first, timed apart. Rows share entries (same k and views) and views (every k = 10 entry
    # holds the same plain view); a row's labelling cost is that of every view its entry needs,
    # labelled from nothing. Plain-view entries go first, so a views entry's time excludes the plain view.
    plain_s: dict[int, float] = {}  # top_k -> seconds to label the plain view
    entry_s: dict[str, float] = {}  # cache key -> full labelling cost of the entry
    configs = {r: Config.from_dict(row_config(r, profile, profile.seeds[0], teacher_arch)) for r in rows}
    for row in sorted(rows, key=lambda r: configs[r].cached_views() > 0):
        cfg = configs[row]
        ref, seconds = _timed(run_teacher_inference, str(dataset_dir), adapted["teacher_uri"], cfg.to_yaml(), cache,
                              str(workdir / "labels" / row))
        if ref.cache_key not in entry_s:
            k = cfg.teacher.top_k
            if ref.views == 0:
                plain_s[k] = seconds
            entry_s[ref.cache_key] = seconds + (plain_s.get(k, 0.0) if ref.views else 0.0)
        cost = entry_s[ref.cache_key]
        results["labelling"][row] = {"views": ref.views, "seconds": cost, "top_k": cfg.teacher.top_k,
                                     "cache_key": ref.cache_key, "distill": cfg.to_dict()["distill"]}
        print(f"{row:12s} labelling: {cost:.0f}s ({ref.views} augmented views + the plain view, "
              f"k = {cfg.teacher.top_k})", flush=True)
    for row in rows:
        runs = []
        for seed in profile.seeds:
            cfg = Config.from_dict(row_config(row, profile, seed, teacher_arch)).to_yaml()
            out = workdir / "runs" / row / str(seed)
            shutil.rmtree(out, ignore_errors=True)
            ref = run_teacher_inference(str(dataset_dir), adapted["teacher_uri"], cfg, cache, str(out / "ref"))
            assert ref.cache_hit, "labelled above"
            trained, t_train = _timed(run_distillation, str(dataset_dir), str(out / "ref"), cfg, str(out / "model"),
                                      tracking)
            report = run_evaluation(str(dataset_dir), str(out / "ref"), str(out / "model"), cfg, tracking,
                                    trained["run_id"])
            acc = {k: v["value"] for k, v in report["accuracy"].items() if k in ("student_top1", "teacher_top1",
                                                                                   "agreement")}
            runs.append({"seed": seed, "test_top1": acc["student_top1"], "agreement": acc["agreement"],
                         "teacher_top1": acc["teacher_top1"], "train_s": t_train, "views": ref.views,
                         "mode": configs[row].teacher_mode()})
            print(f"{row:12s} seed {seed}: top-1 {100 * acc['student_top1']:.2f}%  agreement "
                  f"{100 * acc['agreement']:.2f}%  train {t_train:.0f}s", flush=True)
        results["rows"][row] = runs
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results


def _device_card() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    return f"CPU: {model}, {torch.get_num_threads()} threads"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _top1(rows: dict, name: str) -> tuple[float, float]:
    return _mean_std([r["test_top1"] for r in rows[name]])


def table(results: dict) -> list[str]:
    """A Markdown table: each row against ce and against KD in the same teacher mode (offline rows
    against kd-views, online rows against kd-online), and wall times against kd-online."""
    rows, labelling = results["rows"], results["labelling"]
    ce = _top1(rows, "ce")[0] if "ce" in rows else None
    kd = {"offline": _top1(rows, "kd-views")[0] if "kd-views" in rows else None,
          "online": _top1(rows, "kd-online")[0] if "kd-online" in rows else None}
    online = statistics.mean(r["train_s"] for r in rows["kd-online"]) if "kd-online" in rows else None
    lines = ["| row | teacher | test top-1 (mean ± std) | vs ce | vs kd (same teacher mode) | agreement with teacher "
             "| train wall (mean) | teacher labelling, once | train wall vs kd-online |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in rows.items():
        mean, std = _top1(rows, name)
        mode = runs[0].get("mode", "")
        agree = statistics.mean(r["agreement"] for r in runs)
        train_s = statistics.mean(r["train_s"] for r in runs)
        delta = f"{100 * (mean - ce):+.2f}" if ce is not None else "n/a"
        ref = kd.get(mode)
        vs_kd = f"{100 * (mean - ref):+.2f}" if ref is not None and name not in ("kd-views", "kd-online") else "n/a"
        ratio = f"{train_s / online:.2f}" if online else "n/a"
        label = labelling[name]
        lines.append(f"| {name} | {mode} | {100 * mean:.2f} ± {100 * std:.2f} | {delta} | {vs_kd} | {100 * agree:.2f} | "
                     f"{train_s:.0f} s | {label['seconds']:.0f} s ({label['views']} views + plain, "
                     f"k = {label.get('top_k', 10)}) | {ratio} |")
    lines.append("")
    if "kd-views" in rows and online:
        views_train = statistics.mean(r["train_s"] for r in rows["kd-views"])
        with_labels = views_train + labelling["kd-views"]["seconds"]
        online_with = online + labelling["kd-online"]["seconds"]
        gap = 100 * (_top1(rows, "kd-views")[0] - _top1(rows, "kd-online")[0])
        spread = 100 * _top1(rows, "kd-online")[1]
        lines.append(f"kd-views vs kd-online: top-1 {gap:+.2f} points (kd-online's seed std {spread:.2f}); "
                     f"wall time {views_train / online:.2f}x training alone, {with_labels / online_with:.2f}x "
                     f"with each row's one-time labelling counted in full for a single run.")
    methods = [n for n in rows if n not in ("ce", "kd-plain", "kd-views", "kd-online", "kd-k3", "dkd-k3")]
    if methods and kd["offline"] is not None and kd["online"] is not None:
        best = max(methods, key=lambda n: _top1(rows, n)[0])
        mean, std = _top1(rows, best)
        lines.append(f"Best method row: {best} at {100 * mean:.2f} ± {100 * std:.2f}; "
                     f"{100 * (mean - kd['offline']):+.2f} points vs kd-views, "
                     f"{100 * (mean - kd['online']):+.2f} vs kd-online.")
    for small, full in (("kd-k3", "kd-views"), ("dkd-k3", "dkd")):
        if small in rows and full in rows:
            lines.append(f"{small} vs {full} (top 3 of 10 logits cached, the rest modelled, vs all 10): "
                         f"{100 * (_top1(rows, small)[0] - _top1(rows, full)[0]):+.2f} points.")
    return lines


def report(results: dict, command: str) -> str:
    p, counts = results["profile"], results["counts"]
    teacher = statistics.mean(r["teacher_top1"] for runs in results["rows"].values() for r in runs)
    adapt = results["adaptation"]
    return "\n".join([
        f"Device: {results['device']}; torch {results['torch']}.",
        f"Command: `{command}`",
        f"Data: CIFAR-10 JPEG folders, {counts.get('train', 0)} train / {counts.get('val', 0)} val / "
        f"{counts.get('test', 0)} test images ({p['train_per_class'] or 'all'} train and "
        f"{p['test_per_class'] or 'all'} test per class). Schedule: {p['epochs']} epochs, batch {p['batch_size']}, "
        f"SGD lr {p['lr']} cosine, seeds {list(p['seeds'])}; V = {p['views']} cached views.",
        "Methods (distill sections as run):",
        *(f"- {row}: `{_compact(label['distill'])}`" for row, label in results["labelling"].items()),
        f"Teacher: {results['teacher_arch']} from {results['teacher_file']}, adapted for {p['adapt_epochs']} epochs "
        f"(val top-1 {_pct(adapt.get('val_accuracy_before'))} before, {_pct(adapt.get('val_accuracy_after'))} after; "
        f"{results['adapt_s']:.0f} s); test top-1 {100 * teacher:.2f}%.",
        "",
        *table(results),
    ])


def _compact(section: dict) -> str:
    """A distill section on one line, defaults included (what the run resolved)."""
    return json.dumps(section, separators=(", ", ": "))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"
