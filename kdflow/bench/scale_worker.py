"""One step of the scale benchmark in a process of its own, so that its peak RSS is that step's alone:
``python -m kdflow.bench.scale_worker {preprocess,teacher,train} --work DIR --config FILE [...]``.

It calls the public step functions (what a pipeline task runs) and nothing else; the parent
(kdflow.bench.scale) reads this process's peak RSS from ``os.wait4`` when it exits.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdflow.bench.scale_worker")
    parser.add_argument("step", choices=["preprocess", "teacher", "train"])
    parser.add_argument("--work", required=True, type=Path, help="this size's work folder (outputs go under it)")
    parser.add_argument("--config", required=True, type=Path, help="the run config (YAML file)")
    parser.add_argument("--images", type=Path, help="image folder (preprocess)")
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint (teacher)")
    args = parser.parse_args(argv)
    config = args.config.read_text()
    work = args.work
    dataset, cache, ref, model = work / "dataset", work / "cache", work / "ref", work / "model"
    if args.step == "preprocess":
        from kdflow.steps.preprocess import run_preprocess

        shutil.rmtree(dataset, ignore_errors=True)
        out = run_preprocess(str(args.images), config, str(dataset))
        result = {"counts": out["counts"]}
    elif args.step == "teacher":
        from kdflow.steps.teacher import run_teacher_inference

        shutil.rmtree(cache, ignore_errors=True)  # a cache miss: the teacher labels every view
        shutil.rmtree(ref, ignore_errors=True)
        r = run_teacher_inference(str(dataset), str(args.teacher), config, str(cache), str(ref))
        result = {"cache_hit": r.cache_hit, "views": r.views}
    else:
        from kdflow.steps.distill import run_distillation

        shutil.rmtree(model, ignore_errors=True)
        out = run_distillation(str(dataset), str(ref), config, str(model), f"sqlite:///{work / 'mlflow.db'}")
        result = {"final_metrics": out["final_metrics"]}
    # One JSON line last on stdout: what the parent records beside the peak RSS.
    print(json.dumps({"step": args.step, **result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
