"""What a student saves over its teacher: size on disk, CPU latency and throughput, measured together.

Both models are measured in one call, on the same machine, in the same process, with the same
input and thread count, so the ratios (``speedups``) compare like with like. Absolute numbers
depend on the machine and are for the report; the ratios are what a gate or a reader should use.

Measurement choices:
- CPU, batch 1 for latency: the serving case a distilled student is usually for (one request, no
  batching), and the one where a small model's advantage is least hidden by parallelism.
- Interleaved runs: student and teacher alternate one timed forward each (the order flips every
  round, ABBA), so frequency scaling, a noisy neighbour or thermal drift on a shared machine lands on
  both models equally instead of on whichever was measured second.
- p50 and p95: the median is the typical request; p95 is the tail a serving SLO sees (scheduler
  preemption, allocator and cache effects). p99 would need far more runs than a pipeline step can
  afford to be more than the maximum of a noisy sample.
- Throughput at ``batch`` images per forward: what offline scoring gets; from the median batch time
  (images / median seconds), so one preempted run does not drag it down.
"""

from __future__ import annotations

import io
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import chain
from typing import Iterator

import numpy as np
import torch

from kdflow.util.cpus import available_cpus
from torch import nn

from kdflow.util.errors import KdflowError

# The fixed seed of the measurement input: the same pixels for both models and across runs.
INPUT_SEED = 0


@dataclass(frozen=True)
class ModelCost:
    parameters: int
    size_bytes: int  # bytes of torch.save(model.state_dict()): the size on disk
    latency_p50_ms: float  # CPU, batch 1, median over runs
    latency_p95_ms: float
    throughput: float  # images/s at batch `batch`
    batch: int
    threads: int  # torch CPU threads used while measuring

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` itself, on the CPU and in eval mode while the block runs; afterwards its device and
    every submodule's train/eval flag are what they were.

    Moved and moved back, not copied: a copy of a large teacher would need its memory twice, and
    ``Module.to`` keeps the parameter objects, so an optimizer holding them is unaffected. The eval
    flag is set on each submodule directly rather than through ``eval()``: a torch.export program's
    module refuses ``eval()``, and kdflow's ``Frozen`` wrapper ignores it on purpose.
    """
    devices = {t.device for t in chain(model.parameters(), model.buffers())}
    if len(devices) > 1:
        raise KdflowError(
            f"the model's tensors are spread over several devices ({', '.join(sorted(map(str, devices)))})",
            "move the model to one device (model.to(device)) before measuring or exporting it",
        )
    device = next(iter(devices), torch.device("cpu"))
    modes = [(m, m.training) for m in model.modules()]
    try:
        if device.type != "cpu":
            model.cpu()
        for m, _ in modes:
            m.training = False
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        if device.type != "cpu":
            model.to(device)


def _parameter_count(model: nn.Module) -> int:
    """Parameters, or for a module that keeps its weights as buffers (some compiled or exported
    modules do) and so has none, the floating-point tensors of its state_dict."""
    count = sum(p.numel() for p in model.parameters())
    if count == 0:
        count = sum(t.numel() for t in model.state_dict().values() if torch.is_floating_point(t))
    return int(count)


def _size_bytes(model: nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def _timed_ns(model: nn.Module, x: torch.Tensor) -> int:
    start = time.perf_counter_ns()
    model(x)
    return time.perf_counter_ns() - start


def _interleaved(models: tuple[nn.Module, nn.Module], x: torch.Tensor, runs: int) -> list[list[int]]:
    """``runs`` timed forwards of each model on ``x``, alternating, the order flipped every round
    (ABBA): linear drift over the measurement then weighs on both equally. Nanoseconds per model."""
    times: list[list[int]] = [[], []]
    for r in range(runs):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for i in order:
            times[i].append(_timed_ns(models[i], x))
    return times


def _warm(models: tuple[nn.Module, nn.Module], x: torch.Tensor, runs: int) -> None:
    """Untimed forwards: the first calls at a new shape pick kernels and allocate; a model that
    cannot run this input fails here, named, rather than inside a timing loop."""
    for role, model in zip(("student", "teacher"), models):
        try:
            for _ in range(max(runs, 1)):
                model(x)
        except Exception as exc:
            raise KdflowError(
                f"the {role} cannot run an input of shape {list(x.shape)}: {type(exc).__name__}: {exc}",
                "pass the image shape (C, H, W) the models were trained on",
            ) from exc


def measure_pair(
    student: nn.Module,
    teacher: nn.Module,
    image_shape: tuple[int, int, int],
    runs: int = 50,
    warmup: int = 5,
    batch: int = 64,
    throughput_runs: int = 10,
    threads: int = 0,
) -> tuple[ModelCost, ModelCost]:
    """CPU cost of ``student`` and ``teacher`` (any modules taking [B, C, H, W] pixels in [0, 1]),
    measured interleaved on this machine; returns (student cost, teacher cost).

    ``image_shape`` is (C, H, W). ``runs`` timed batch-1 forwards per model give the latency
    percentiles, ``throughput_runs`` timed forwards at ``batch`` the throughput. ``threads`` > 0 sets
    torch's CPU threads for the measurement (process-wide, restored afterwards); 0 keeps the current
    setting, capped at the CPUs this process may really use (``available_cpus``). Models on a GPU
    are moved to the CPU for the measurement and moved back (``on_cpu``).
    """
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {tuple(image_shape)}")
    if runs < 1 or throughput_runs < 1 or batch < 1 or warmup < 0 or threads < 0:
        raise ValueError("runs, throughput_runs and batch must be >= 1; warmup and threads >= 0")
    generator = torch.Generator().manual_seed(INPUT_SEED)
    single = torch.rand((1, *image_shape), generator=generator)  # [1, C, H, W] in [0, 1]
    batched = torch.rand((batch, *image_shape), generator=generator)  # [batch, C, H, W]

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads if threads > 0 else min(previous_threads, available_cpus()))
    try:
        used_threads = torch.get_num_threads()
        with on_cpu(student), on_cpu(teacher), torch.inference_mode():
            pair = (student, teacher)
            _warm(pair, single, warmup)
            latency = _interleaved(pair, single, runs)
            _warm(pair, batched, 1)
            batch_times = _interleaved(pair, batched, throughput_runs)
            costs = tuple(
                ModelCost(
                    parameters=_parameter_count(model),
                    size_bytes=_size_bytes(model),
                    latency_p50_ms=float(np.percentile(latency[i], 50)) / 1e6,
                    latency_p95_ms=float(np.percentile(latency[i], 95)) / 1e6,
                    throughput=batch / (max(float(np.median(batch_times[i])), 1.0) / 1e9),
                    batch=batch,
                    threads=used_threads,
                )
                for i, model in enumerate(pair)
            )
    finally:
        torch.set_num_threads(previous_threads)
    return costs[0], costs[1]


def _ratio(numerator: float, denominator: float) -> float:
    """nan when the denominator is 0 (a module with an empty state_dict, e.g. a frozen TorchScript
    file whose weights are constants): not measurable, yet still a float for the report's formatting
    and the MLflow metrics that take these values; inf would read as an infinite saving."""
    return float(numerator) / float(denominator) if denominator else math.nan


def speedups(student: ModelCost, teacher: ModelCost) -> dict:
    """How much the student saves; every ratio is > 1 when the student is the cheaper model."""
    return {
        "latency_speedup": _ratio(teacher.latency_p50_ms, student.latency_p50_ms),
        "throughput_speedup": _ratio(student.throughput, teacher.throughput),
        "size_ratio": _ratio(teacher.size_bytes, student.size_bytes),
        "parameter_ratio": _ratio(teacher.parameters, student.parameters),
    }
