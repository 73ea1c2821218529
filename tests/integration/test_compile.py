"""train.compile: a compiled student trains (in a fresh interpreter), and its checkpoint loads into an
uncompiled one."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdflow.config import TrainConfig
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.models import Classifier, create_model
from kdflow.training.batches import ArrayBatches
from kdflow.training.trainer import CHECKPOINT, fit
from tests.helpers import class_arrays as _arrays
from tests.helpers import hang_guard

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 900  # a guard against a hung compiler (hang_guard scales it), not a speed limit: past it the test fails


def compiled_run(out: str) -> None:
    """One tiny epoch with a compiled student (in a subprocess: see the test); checks what it can."""
    cfg = TrainConfig(epochs=1, batch_size=12, lr=0.05, seed=1, compile=True)
    student, distiller = _distiller()
    batches = ArrayBatches(_arrays(), cfg.batch_size, torch.device("cpu"))
    fit(distiller, batches, cfg, checkpoint_dir=out)
    assert distiller.student is student  # the eager student is back
    torch.save(student.state_dict(), Path(out) / "student.pt")


def _distiller():
    torch.manual_seed(0)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    return student, build_distiller("ce", student, None, get_distiller_class("ce").Options())


def test_a_compiled_student_trains_and_its_checkpoint_loads_uncompiled(tmp_path):
    """Run in a subprocess (inductor compiles C++ on the CPU and keeps state per process). Skipped only
    where the machine has no C++ compiler at all; a compile error or a hang fails it."""
    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("torch.compile on the CPU needs a C++ compiler, and there is none here")
    code = f"from tests.integration.test_compile import compiled_run; compiled_run({str(tmp_path)!r})"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=hang_guard(HANG_S), env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr[-3000:]
    state = torch.load(io.BytesIO((tmp_path / CHECKPOINT).read_bytes()), weights_only=True)
    assert not any("_orig_mod" in k for k in state["model"])
    _, fresh = _distiller()
    fresh.load_checkpoint_state(state["model"])  # an uncompiled distiller takes it as is
    trained = torch.load(tmp_path / "student.pt", weights_only=True)
    for name, value in fresh.student.state_dict().items():
        assert torch.equal(trained[name], value), name
