"""Small generated data for tests: no downloads, nothing from ../shared."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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


def messy_folder(root: Path) -> Path:
    """Predefined train/ and test/, duplicates within and across splits and classes, defects,
    and near-duplicate frames (for phash grouping)."""
    make_image_folder(root / "train", per_class=12)
    make_image_folder(root / "test", per_class=3, size=10)
    train, test = root / "train", root / "test"
    (test / "apple" / "dup-of-train.png").write_bytes((train / "apple" / "000.png").read_bytes())
    (train / "plum" / "copy.png").write_bytes((train / "plum" / "002.png").read_bytes())
    (train / "kiwi" / "other-class.png").write_bytes((train / "apple" / "004.png").read_bytes())
    good = jpeg_bytes(class_image(0, seed=999))
    (train / "apple" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (train / "kiwi" / "notes.txt").write_text("not an image")
    (train / "plum" / "empty.png").write_bytes(b"")
    (root / "README.md").write_text("stray")
    base = class_image(1, seed=4242, size=16).astype(np.int16)
    for k in range(4):  # a track of near-duplicates, one frame in test/
        frame = np.clip(base + np.random.default_rng(k).integers(-4, 5, base.shape), 0, 255).astype(np.uint8)
        ((test if k == 0 else train) / "kiwi" / f"frame{k}.png").write_bytes(png_bytes(frame))
    return root


def dataset_files(out: Path) -> dict:
    """A dataset folder's files (manifest, report, shards) by name, with their bytes."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def storage_roundtrip(base: str) -> None:
    """The storage contract every backend keeps (kdflow.storage): write, overwrite, size, list, delete."""
    import pytest

    from kdflow.storage import join, storage_for
    from kdflow.util.errors import StorageError

    store = storage_for(base)
    a, b = join(base, "x", "a.bin"), join(base, "x", "deep", "b.bin")
    assert not store.exists(a) and store.size(a) is None
    store.write_bytes(a, b"alpha")
    store.write_bytes(b, b"beta!")
    store.write_bytes(a, b"alpha2")  # overwrite
    assert store.read_bytes(a) == b"alpha2" and store.size(b) == 5 and store.exists(b)
    assert store.list(join(base, "x")) == sorted([a, b])
    assert store.list(join(base, "nothing-here")) == []
    store.delete(a)
    assert not store.exists(a) and store.list(join(base, "x")) == [b]
    with pytest.raises(StorageError, match="does not exist"):
        store.read_bytes(a)


def creates_only_once(base: str) -> None:
    """write_if_absent on any backend: True, this call created the object; False, one was there and
    is left exactly as it was."""
    from kdflow.storage import join, storage_for

    store = storage_for(base)
    uri = join(base, "d", "claim.json")
    assert store.write_if_absent(uri, b"first") is True
    assert store.write_if_absent(uri, b"second") is False
    assert store.read_bytes(uri) == b"first"
    assert store.list(base) == [uri]  # no temp file left beside it, in either outcome


def upload_folder(folder: Path, bucket: str, prefix: str) -> str:
    """Every file below ``folder`` as objects under s3://bucket/prefix/ (through the S3 endpoint the
    environment names): data on a cluster lives in object storage. Returns that URI."""
    import boto3

    s3 = boto3.client("s3")
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            s3.put_object(Bucket=bucket, Key=f"{prefix}/{p.relative_to(folder).as_posix()}", Body=p.read_bytes())
    return f"s3://{bucket}/{prefix}/"


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs: bound, never listening.
    Holding the socket is what makes it certain: a port found free and then closed can be taken by
    any other process (another test session's server) before the test connects to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


def hang_guard(seconds: float) -> float:
    """A time limit that only catches a hang, never a slow machine: ``seconds`` is generous for an idle
    2-core machine, and grows with the load when the guard starts (other work on the machine slows every
    process of the tests alike); KDFLOW_TEST_TIMEOUT_SCALE multiplies it further (a slow CI runner)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        load = os.getloadavg()[0] / cpus
    except OSError:  # no load average on this platform
        load = 1.0
    return seconds * max(1.0, load) * float(os.environ.get("KDFLOW_TEST_TIMEOUT_SCALE") or 1)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_kdflow(*args, cwd, env=None, timeout: float = 1800) -> subprocess.CompletedProcess:
    """The ``kdflow`` command in a subprocess, as a user runs it: no tracking URI, S3 endpoint or
    KDFLOW_HOME inherited from the test session (unless ``env`` sets them). ``timeout``: the hang
    guard's base (hang_guard scales it): ten times the slowest command here, the digits default run,
    since the load may rise after the guard is set."""
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "KDFLOW_HOME")}
    return subprocess.run([sys.executable, "-c", "from kdflow.cli import entrypoint; entrypoint()", *args],
                          cwd=cwd, env={**base, **(env or {}), "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=hang_guard(timeout))


def summary_fields(stdout: str) -> dict[str, str]:
    """The lines of ``kdflow run``'s summary, by label ("registered" -> "tiny-student version 1 @challenger")."""
    import re

    return {m.group(1): m.group(2) for m in re.finditer(r"^  (\S.*?)\s{2,}(.*)$", stdout, re.M)}


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


@dataclass(frozen=True)
class Labelled:
    """A dataset preprocessed and labelled by a teacher: what teacher inference hands distillation."""

    dataset: Path  # the preprocessed dataset (manifest and shards)
    cache: Path  # the soft-label cache root that holds its entry
    ref: Path  # the folder of the SoftLabelRef teacher inference wrote

    def copy_to(self, root: Path) -> "Labelled":
        """A private copy under ``root``, its ref naming the copied cache: for a test that writes beside
        the cache (distillation keeps its checkpoints there) or changes it."""
        import dataclasses
        import shutil

        from kdflow.softlabels.ref import SoftLabelRef

        copy = Labelled(root / "ds", root / "cache", root / "ref")
        shutil.copytree(self.dataset, copy.dataset)
        shutil.copytree(self.cache, copy.cache)
        dataclasses.replace(SoftLabelRef.load(str(self.ref)), cache_uri=str(copy.cache)).save(str(copy.ref))
        return copy


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
