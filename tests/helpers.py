"""Small generated data for tests: no downloads, nothing from ../shared."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_COLOURS = {"apple": (200, 30, 30), "kiwi": (30, 180, 40), "plum": (40, 40, 200)}


def class_image(label_index: int, seed: int, size: int = 12) -> np.ndarray:
    """A noisy picture whose dominant colour and stripe pattern depend on the class."""
    rng = np.random.default_rng(seed)
    colour = np.array(list(CLASS_COLOURS.values())[label_index % len(CLASS_COLOURS)], dtype=np.float64)
    img = colour + rng.normal(0, 25, size=(size, size, 3))
    img[:, :: (label_index + 2)] += 40  # class-specific stripes
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_image_folder(root: Path, per_class: int = 20, size: int = 12) -> Path:
    """root/<class>/<i>.png|jpg, distinct images, no defects."""
    for li, name in enumerate(CLASS_COLOURS):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = class_image(li, seed=li * 10_000 + i, size=size)
            if i % 2:
                (folder / f"{i:03d}.jpg").write_bytes(jpeg_bytes(arr))
            else:
                (folder / f"{i:03d}.png").write_bytes(png_bytes(arr))
    return root


def upload_folder(folder: Path, bucket: str, prefix: str) -> str:
    """Every file below ``folder`` as objects under s3://bucket/prefix/ (through the S3 endpoint the
    environment names): data on a cluster lives in object storage. Returns that URI."""
    import boto3

    s3 = boto3.client("s3")
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())
    return f"s3://{bucket}/{prefix}/"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_kdflow(*args, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    """The ``kdflow`` command in a subprocess, as a user runs it: no tracking URI, S3 endpoint or
    KDFLOW_HOME inherited from the test session (unless ``env`` sets them)."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "KDFLOW_HOME")}
    return subprocess.run([sys.executable, "-c", "from kdflow.cli import entrypoint; entrypoint()", *args],
                          cwd=cwd, env={**base, **(env or {}), "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=timeout)


def class_arrays(n_per_class: int = 12, size: int = 8):
    """``n_per_class`` generated pictures of each of 3 classes as a split (ids are row numbers)."""
    from kdflow.data.shards import SplitArrays

    images, labels = [], []
    for label in range(3):
        for i in range(n_per_class):
            images.append(class_image(label, seed=label * 100 + i, size=size))
            labels.append(label)
    return SplitArrays(np.stack(images), np.array(labels), np.array([f"{i:016x}" for i in range(len(labels))]))


def count_device_reads(monkeypatch) -> dict:
    """Count every read of a tensor's value on the host (item, bool, float, int, tolist): each is a
    sync point on a GPU. Returns the counter, {"n": reads so far}; reset it by assigning 0."""
    import torch

    reads = {"n": 0}
    for method in ("item", "__bool__", "__float__", "__int__", "tolist"):
        real = getattr(torch.Tensor, method)

        def counted(self, *args, _real=real, **kwargs):
            reads["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return reads


@dataclass
class Ran:
    """What a CLI call gave: its exit status and its output."""

    code: int
    out: str
    err: str


def cli_in_process(*args: str, env: dict | None = None) -> Ran:
    """The ``kdflow`` CLI in this process through its real entry point (exit statuses and error output
    as a user sees them: a KdflowError is exit 2 there); ``env``: variables set for the call."""
    from unittest import mock

    from click.testing import CliRunner

    from kdflow.cli import entrypoint

    with CliRunner().isolation(env=env) as (out, err, _), mock.patch.object(sys, "argv", ["kdflow", *args]):
        try:
            entrypoint()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        sys.stdout.flush()
        sys.stderr.flush()
        return Ran(code, out.getvalue().decode(), err.getvalue().decode())
