"""Export a model for serving (TorchScript, ONNX) and prove the exported file computes what PyTorch does.

An export is only worth shipping if it was run: every artifact is loaded back with the runtime a
server would use (``torch.jit.load``; ``onnxruntime`` on CPU) and its logits on the caller's real
images are compared with the PyTorch model's. The batch dimension is dynamic, and the check runs at
batch sizes other than the export example's, so a batch size baked in by tracing fails the check.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript): the maintained
exporter and the default since torch 2.9. A module torch.export cannot capture (a TorchScript
teacher) falls back to the TorchScript-based exporter (``dynamo=False``), deprecated but still in
torch 2.13; ``ExportCheck.detail`` says which one wrote the file.

Tolerance is on logits (what a server returns, what argmax and softmax read), relative to the largest
|logit| of the check images, and absolute when the logits are under 1: float32 kernels that sum in
another order differ from PyTorch by an amount that grows with the logits' scale (1e-6..1e-5 at a
few units; up to ~1e-5 relative for a trained ResNet). The default (1e-3, ``evaluate.export_tolerance``)
leaves room for that; real export bugs (normalisation lost, batch-norm in training mode, a wrong
layer) change logits by a sizeable fraction of their scale. ``max_abs_diff`` and ``max_rel_diff``
are both reported.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from kdflow.util.errors import KdflowError
from kdflow.evaluation.cost import on_cpu

FORMATS = ("torchscript", "onnx")
FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
RUNTIMES = {"torchscript": "torch.jit", "onnx": "onnxruntime"}
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass(frozen=True)
class ExportCheck:
    format: str  # "torchscript" | "onnx"
    file: str  # file name inside out_dir (model.ts / model.onnx)
    size_bytes: int
    max_abs_diff: float  # largest |exported - pytorch| logit difference on the check images; nan if not run
    tolerance: float
    verified_with: str  # "torch.jit", "onnxruntime", or "onnx.checker only (onnxruntime not installed)"
    passed: bool
    max_rel_diff: float = math.nan  # max_abs_diff / largest |pytorch logit|
    detail: str = ""  # how it was exported and checked, or why the check failed

    def to_dict(self) -> dict:
        """Plain values; a difference that was not measured stays nan (a float, so reports that
        format it and metric stores that take floats need no special case; ``detail`` says why)."""
        return asdict(self)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporters' progress prints, deprecation warnings and registry log lines ("torchvision is
    not installed") are noise in a pipeline log; a real failure still raises, and its root cause goes
    into the KdflowError (``_reason``). (The TorchScript-based exporter's graph dump on a failure is
    written by C++ straight to the process's stderr, out of Python's reach.)"""
    # onnxscript's optimiser logs every pass at INFO ("Removed 38 unused nodes") through the root logger.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    # The TorchScript-based exporter switches torch's C++ ONNX log on and never off (it tests the
    # function object, not its result): put back, so the rest of the process does not inherit it.
    jit_log = getattr(torch._C, "_jit_is_onnx_log_enabled", lambda: None)()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        if jit_log is not None:
            torch._C._jit_set_onnx_log_enabled(jit_log)


def _reason(exc: BaseException) -> str:
    """The root cause of an exporter's error, in a line or three: the torch.onnx wrapper's own message
    is boilerplate ("step 1/3 ... submit a PR") around pages of graph dumps."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # terminal colour codes
    lines = [line.strip() for line in text.splitlines() if line.strip()][:3]
    return f"{type(exc).__name__}: {' '.join(lines)[:400]}"


# --- writing ---------------------------------------------------------------------------------------

def _write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """A TorchScript module is saved as it is; otherwise scripted (keeps control flow), or traced
    when scripting or saving the scripted module fails (any Python the tracer can run, e.g. a
    torch.export program's module). A batch size the tracer bakes in fails the check afterwards."""
    if isinstance(model, torch.jit.ScriptModule):
        attempts = [("saved as is (already TorchScript)", lambda: model)]
    else:
        attempts = [("exported with torch.jit.script", lambda: torch.jit.script(model)),
                    ("exported with torch.jit.trace", lambda: torch.jit.trace(model, example, check_trace=False))]
    failures = []
    for how, build in attempts:
        try:
            torch.jit.save(build(), str(path))
            return how
        except Exception as exc:
            failures.append(f"{how}: {_reason(exc)}")
    raise KdflowError(
        f"cannot export the model to TorchScript: {'; '.join(failures)}",
        "make the model's forward scriptable or traceable (tensor ops only, no data-dependent Python), "
        "or export only to ONNX (formats=('onnx',))",
    )


def _write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> str:
    """torch.export-based first; then the TorchScript-based exporter on the module, then on its
    scripted form (a plain module wrapping a TorchScript one, e.g. a loaded teacher in kdflow's
    ``Frozen`` or ``Classifier``, is neither capturable by torch.export nor traceable as it is)."""
    try:
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, verbose=False,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,  # one self-contained file (ONNX's 2 GB protobuf limit applies)
        )
        return "exported with torch.onnx (dynamo: torch.export + onnxscript)"
    except Exception as exc:
        failures = [f"torch.export-based exporter: {_reason(exc)}"]
    candidates = [("", lambda: model)]
    if not isinstance(model, torch.jit.ScriptModule):
        candidates.append((" of the torch.jit.script'ed model", lambda: torch.jit.script(model)))
    for label, build in candidates:
        try:
            torch.onnx.export(
                build(), (example,), str(path), dynamo=False,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
            return f"exported with torch.onnx's TorchScript-based exporter{label} ({failures[0]})"
        except Exception as exc:
            failures.append(f"TorchScript-based exporter{label}: {_reason(exc)}")
    raise KdflowError(
        f"cannot export the model to ONNX: {'; '.join(failures)}",
        "make the model's forward capturable by torch.export (no data-dependent Python control flow, "
        "only ops with an ONNX translation; onnxscript must be installed), or export only to "
        "TorchScript (formats=('torchscript',))",
    )


# --- running the exported file ---------------------------------------------------------------------

Runner = Callable[[np.ndarray], np.ndarray]  # float32 [B, C, H, W] -> logits [B, K]


def _torchscript_runner(path: Path) -> tuple[Runner | None, str, str]:
    loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).float().numpy()

    return run, "torch.jit", ""


def _onnx_runner(path: Path) -> tuple[Runner | None, str, str]:
    """onnx.checker always; onnxruntime when installed. Without onnxruntime the file is only
    structurally checked, and that passes: the pipeline's CPU image has onnxruntime (kdflow's
    ``onnx-check`` extra), so a missing runtime means a user's lean install, where refusing every
    ONNX export would cost more than a checker-only verdict that says so in ``verified_with``."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise _CheckFailed("onnx.checker", f"onnx.checker rejected the file: {_reason(exc)}") from exc
    try:
        import onnxruntime
    except ImportError:
        return None, "onnx.checker only (onnxruntime not installed)", "install kdflow[onnx-check] to run the file"
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its graph-optimisation notes are noise here
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {input_name: x})[0], dtype=np.float32)

    return run, "onnxruntime", ""


class _CheckFailed(Exception):
    """The exported file exists but does not verify: a failed ExportCheck, not an exception."""

    def __init__(self, verified_with: str, detail: str):
        super().__init__(detail)
        self.verified_with, self.detail = verified_with, detail


_WRITERS = {"torchscript": _write_torchscript, "onnx": _write_onnx}
_RUNNERS = {"torchscript": _torchscript_runner, "onnx": _onnx_runner}


def _compare(run: Runner, batches: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max |exported - pytorch|, that over the largest |pytorch logit|) over every check batch.
    np.max, not Python's max, so a NaN logit makes the difference NaN (a failed check), not 0."""
    diffs, scales = [], []
    for x, want in zip(batches, expected):
        got = run(x)  # [B, K]
        if got.shape != want.shape:
            raise _CheckFailed("", f"the exported model returned shape {list(got.shape)} for a batch of "
                                   f"{x.shape[0]}; PyTorch returned {list(want.shape)}")
        diffs.append(np.max(np.abs(got - want)))
        scales.append(np.max(np.abs(want)))
    worst, scale = float(np.max(diffs)), float(np.max(scales))
    return worst, (worst / scale if scale else math.nan)


def _check_batches(images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The export example and the check batches, at different batch sizes: the check runs on all N
    images and on one (the serving case); the example has 2 rows, or 3 when N is 2, since
    torch.export treats a size of 1 as a constant. The example's rows are the caller's images, cycled."""
    n = images.shape[0]
    example_rows = 3 if n == 2 else 2
    example = images[torch.arange(example_rows) % n]  # [2 or 3, C, H, W]
    batches = [images] if n == 1 else [images, images[:1]]  # [N, C, H, W], [1, C, H, W]
    return example, batches


def _as_images(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4 or images.shape[0] < 1:
        raise ValueError(f"images must be [N, C, H, W] with N >= 1, got shape {list(images.shape)}")
    return images.detach().to("cpu", torch.float32).contiguous()


def export_model(
    model: nn.Module,
    images: torch.Tensor,
    out_dir: str | Path,
    formats: Sequence[str] = FORMATS,
    tolerance: float = 1e-3,
) -> list[ExportCheck]:
    """Write ``model`` in each of ``formats`` to ``out_dir`` (model.ts, model.onnx) with a dynamic
    batch dimension, run each file on ``images`` and compare its logits with the model's.

    ``images``: float [N, C, H, W] in [0, 1], real test images; a few dozen are enough (they run as
    one batch). ``tolerance`` is the largest logit difference that passes, relative to the largest
    |logit| (absolute when the logits are under 1). A model that
    cannot be exported raises ``KdflowError`` naming the format; a file that does not reproduce the
    model's logits (or does not run at another batch size) gives ``passed=False`` and a ``detail``.
    The model is exported from the CPU in eval mode; its device and mode are restored (``on_cpu``).
    """
    if isinstance(formats, str):  # formats="onnx" means ("onnx",), not its letters
        formats = (formats,)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise KdflowError(f"unknown export format(s): {', '.join(map(repr, unknown))}",
                          f"use one or more of: {', '.join(FORMATS)}")
    images = _as_images(images)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    example, batches = _check_batches(images)

    checks = []
    with on_cpu(model):
        expected = _reference(model, batches)
        for fmt in dict.fromkeys(formats):
            path = out / FILES[fmt]
            with _quiet():
                how = _WRITERS[fmt](model, example, path)
            checks.append(_verify(fmt, path, batches, expected, tolerance, f"{how} at batch {example.shape[0]}"))
    return checks


def verify_export(model: nn.Module, path: str | Path, images: torch.Tensor, tolerance: float = 1e-3,
                  fmt: str | None = None) -> ExportCheck:
    """Check an already exported file against ``model`` the way ``export_model`` checks a new one
    (on all of ``images`` and on the first alone); ``fmt`` defaults to what the file name says
    (``.ts``/``.pt``: torchscript, ``.onnx``: onnx)."""
    path = Path(path)
    fmt = fmt or {".ts": "torchscript", ".pt": "torchscript", ".onnx": "onnx"}.get(path.suffix)
    if fmt not in FORMATS:
        raise KdflowError(f"cannot tell the export format of {path.name}",
                          f"pass fmt= one of: {', '.join(FORMATS)}")
    images = _as_images(images)
    _, batches = _check_batches(images)
    with on_cpu(model):
        expected = _reference(model, batches)
    return _verify(fmt, path, batches, expected, tolerance, f"{path.name}")


def _reference(model: nn.Module, batches: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The PyTorch model's float32 logits [B, K] per check batch: what every export must reproduce."""
    try:
        with torch.inference_mode():
            outputs = [model(b) for b in batches]
    except Exception as exc:
        raise KdflowError(
            f"the model itself cannot run the check images (batch {' and '.join(str(b.shape[0]) for b in batches)}, "
            f"shape {list(batches[0].shape[1:])}): {_reason(exc)}",
            "pass images of the shape the model takes; a torch.export program must have been exported "
            "with a dynamic batch dimension",
        ) from exc
    if not all(isinstance(o, torch.Tensor) for o in outputs):
        raise KdflowError(f"the model returns {type(outputs[0]).__name__}, not a logits tensor",
                          "export a module whose forward returns logits [B, K] (a kdflow Classifier)")
    return [o.float().numpy() for o in outputs]


def _verify(fmt: str, path: Path, batches: Sequence[torch.Tensor], expected: list[np.ndarray], tolerance: float,
            how: str) -> ExportCheck:
    inputs = [b.numpy() for b in batches]  # float32 [B, C, H, W]
    sizes = " and ".join(str(x.shape[0]) for x in inputs)
    base = dict(format=fmt, file=path.name, size_bytes=path.stat().st_size, tolerance=tolerance)
    verified_with = RUNTIMES[fmt]
    try:
        run, verified_with, note = _RUNNERS[fmt](path)
        if run is None:
            return ExportCheck(**base, max_abs_diff=math.nan, verified_with=verified_with, passed=True,
                               detail=f"{how}; {note}")
        worst, relative = _compare(run, inputs, expected)
    except _CheckFailed as failed:
        return ExportCheck(**base, max_abs_diff=math.nan, verified_with=failed.verified_with or verified_with,
                           passed=False, detail=f"{how}; {failed.detail}")
    except Exception as exc:  # the runtime could not load or run the file
        return ExportCheck(**base, max_abs_diff=math.nan, verified_with=verified_with, passed=False,
                           detail=f"{how}; running it at batch {sizes} failed: {_reason(exc)}")
    # Relative to the largest logit (absolute below 1): an exporter may reorder float32 sums, so the
    # error grows with the logits' scale; a real mistake (lost normalisation, wrong layer) is O(1).
    passed = worst <= tolerance or (math.isfinite(relative) and relative <= tolerance)
    return ExportCheck(
        **base, max_abs_diff=worst, max_rel_diff=relative, verified_with=verified_with, passed=passed,
        detail=f"{how}; checked at batch {sizes}"
        + ("" if passed else f"; max |logit difference| {worst:.3g} ({relative:.3g} of the largest |logit|) > "
                             f"tolerance {tolerance:.3g}"),
    )
