"""Device choice (read at run time) and numeric precision."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from kdflow.util.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"train.device '{name}' is not a device", "use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but CUDA is not available here",
                          "use train.device: auto (or cpu) on machines without a GPU")
    return device


@contextmanager
def full_fp32() -> Iterator[None]:
    """fp32 arithmetic that is fp32 on every GPU.

    cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by default on Ampere and later, so
    "no autocast" alone still labels, evaluates and teaches at reduced precision there. Teacher
    labels are reused by every later run and accuracies are reported, so both are computed in full
    fp32; TF32 stays allowed for the student's training step.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
