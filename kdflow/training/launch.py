"""Run a step's function on N processes under torchrun (a task that asks for N GPUs).

A KFP task is one container running one Python process. With ``train.processes`` = N > 1 the
step's function calls ``distributed_call`` instead of training itself: that writes the call
(function path and keyword arguments, JSON) to a temporary folder and re-executes it as

    python -m torch.distributed.run --standalone --nproc-per-node N -m kdflow.training.launch CALL.json

torchrun starts N workers on this machine (a free rendezvous port is picked, nothing to configure);
each worker, a torchrun worker now, calls the same function, which this time trains its share
(``kdflow.training.distributed``). Rank 0 writes the function's result (JSON) last; the parent
waits for all of them and returns it. A failing worker makes torchrun stop the others and exit
non-zero, and the parent then fails with that exit code (``WorkersFailed``).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from kdflow.util.cpus import available_cpus
from kdflow.data.stream import CACHE_DIR_ENV
from kdflow.util.errors import ConfigError, KdflowError
from kdflow.training.distributed import is_torchrun_worker

log = logging.getLogger(__name__)

WORKER_MODULE = "kdflow.training.launch"


class WorkersFailed(KdflowError):
    """A torchrun worker failed; ``returncode`` is torchrun's exit status (the step exits with it)."""

    def __init__(self, returncode: int, processes: int):
        self.returncode = returncode
        super().__init__(f"distributed training failed: torchrun exited with status {returncode} "
                         f"({processes} processes)",
                         "read the first failing rank's error above (torchrun prints each rank's traceback)")


def check_gpus(processes: int, device: torch.device) -> None:
    """On CUDA every process needs a GPU of its own (NCCL refuses two ranks on one GPU); on the CPU
    (gloo) any number of processes run."""
    if device.type == "cuda" and processes > torch.cuda.device_count():
        raise ConfigError(f"train.processes is {processes} but this task sees {torch.cuda.device_count()} GPU(s)",
                          f"give the distill task {processes} GPUs, or set train.processes to the GPUs it has")


def torchrun_command(processes: int, module: str, args: Sequence[str]) -> list[str]:
    """The command that runs ``python -m module args`` on ``processes`` local workers."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", module, *args]


def run_workers(processes: int, module: str, args: Sequence[str]) -> None:
    """Run ``module`` under torchrun and wait; raise ``WorkersFailed`` when any worker failed."""
    cmd = torchrun_command(processes, module, args)
    log.info("starting %d workers: %s", processes, " ".join(cmd))
    env = dict(os.environ)
    # Each worker sees the others' CPUs busy: cap the CPU threads per worker (torchrun would print
    # a warning and set 1; this is the same but quiet, and only when the user has not chosen).
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cpus() // processes)))
    # One local disk cache of remote shards for all workers (each reads every shard of its windows):
    # without it each would download the dataset into a temp folder of its own.
    shared = None if env.get(CACHE_DIR_ENV) else tempfile.mkdtemp(prefix="kdflow-shards-")
    if shared:
        env[CACHE_DIR_ENV] = shared
    try:
        rc = subprocess.run(cmd, env=env, check=False).returncode
    finally:
        if shared:
            shutil.rmtree(shared, ignore_errors=True)
    if rc != 0:
        raise WorkersFailed(rc, processes)


def distributed_call(processes: int, fn: str, kwargs: dict[str, Any]) -> Any:
    """``fn(**kwargs)`` ("package.module:function", JSON-able keyword arguments and result) on
    ``processes`` torchrun workers; returns rank 0's result. With one process, or when this process
    already is a torchrun worker, it is a plain call."""
    if processes <= 1 or is_torchrun_worker():
        return _resolve(fn)(**kwargs)
    with tempfile.TemporaryDirectory(prefix="kdflow-launch-") as tmp:
        call, result = Path(tmp) / "call.json", Path(tmp) / "result.json"
        call.write_text(json.dumps({"fn": fn, "kwargs": kwargs, "result": str(result)}))
        run_workers(processes, WORKER_MODULE, [str(call)])
        if not result.exists():
            raise KdflowError(f"the workers of {fn} exited cleanly but rank 0 wrote no result",
                              "check that the function returns on rank 0 (it must not exit early)")
        return json.loads(result.read_text())


def _resolve(fn: str):
    module, _, name = fn.partition(":")
    if not name:
        raise ValueError(f"'{fn}' is not 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def worker_main(argv: Sequence[str]) -> int:
    """A torchrun worker: run the call in ``argv[0]``; rank 0 writes the result (atomically)."""
    spec = json.loads(Path(argv[0]).read_text())
    out = _resolve(spec["fn"])(**spec["kwargs"])
    if os.environ.get("RANK", "0") == "0":
        result = Path(spec["result"])
        part = result.with_name(result.name + ".part")
        part.write_text(json.dumps(out))
        part.replace(result)  # last: the parent never reads a half-written result
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
