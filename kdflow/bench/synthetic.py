"""Generated image folders for the scale and throughput benchmarks: N JPEGs in class folders, fast,
reproducible, reused between runs.

Each picture is a random 8x8 colour grid upsampled to the requested size, tinted by its class: every
picture is distinct (preprocessing removes exact duplicates, which would shrink the set), cheap to
encode, and the classes are learnable enough for a loss to fall. Content does not matter to what
these benchmarks measure (memory and images per second); the pixel count and the file count do.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

CHUNK = 2000  # images per pool task: large enough that process start-up does not dominate


def _write_chunk(root: str, start: int, stop: int, classes: int, size: int, seed: int) -> None:
    from PIL import Image

    for i in range(start, stop):
        rng = np.random.default_rng((seed, i))
        label = i % classes
        grid = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        tint = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.uint16)
        grid = ((grid.astype(np.uint16) + tint) // 2).astype(np.uint8)
        img = Image.fromarray(grid).resize((size, size), Image.BILINEAR)
        img.save(os.path.join(root, f"class{label:04d}", f"{i:07d}.jpg"), quality=90)


def image_folder(workdir: Path, n: int, size: int, classes: int = 10, seed: int = 0,
                 workers: int | None = None) -> Path:
    """``workdir/images-<n>-<size>px-<classes>c``: ``n`` JPEGs of ``size`` x ``size`` in ``classes``
    folders (``class0000``, ...), made once; a later call with the same arguments returns it at once."""
    folder = workdir / f"images-{n}-{size}px-{classes}c-s{seed}"
    if folder.is_dir():  # only a finished generation has this name (renamed last)
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for c in range(classes):
        (tmp / f"class{c:04d}").mkdir(parents=True)
    chunks = [(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]
    workers = workers or min(len(chunks), os.cpu_count() or 1)
    if workers <= 1:
        for start, stop in chunks:
            _write_chunk(str(tmp), start, stop, classes, size, seed)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for f in [pool.submit(_write_chunk, str(tmp), a, b, classes, size, seed) for a, b in chunks]:
                f.result()
    tmp.rename(folder)
    return folder


def write_teacher(path: Path, arch: str, classes: int, seed: int = 0) -> Path:
    """An untrained ``arch`` saved as a kdflow checkpoint (normalisation [0.5, 0.5]); reused once written."""
    if path.exists():
        return path
    import torch

    from kdflow.models import Classifier, create_model
    from kdflow.models.loading import save_checkpoint

    torch.manual_seed(seed)
    model = Classifier(create_model(arch, classes), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    tmp = path.with_name(path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_bytes(save_checkpoint(model, arch, classes))
    tmp.rename(path)
    return path
