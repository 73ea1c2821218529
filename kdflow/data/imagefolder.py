"""Scan and decode an image-folder dataset.

Layouts accepted (the ones Keras' ``flow_from_directory`` and torchvision's ``ImageFolder`` read):

    root/<class>/<file>                       no predefined split
    root/{train,val,test}/<class>/<file>      predefined splits (``train`` required, others optional)

Files below a class folder are found recursively. Every file is read once: its bytes give the
content hash (duplicate detection, stable sample id) and are decoded with Pillow. A file that does
not decode completely is dropped with a reason; nothing is silently skipped.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from kdflow.config import ResizeMode
from kdflow.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Candidate:
    """A file found in a class folder, before decoding."""

    path: Path
    rel: str  # path relative to the dataset root, for reports
    label_name: str
    split: str | None  # predefined split, or None


@dataclass(frozen=True)
class Decoded:
    rel: str
    label_name: str
    split: str | None
    sha256: str
    image: np.ndarray | None  # uint8 [size, size, 3], None when dropped
    reason: str | None  # why it was dropped


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan(root: Path) -> tuple[list[Candidate], list[str], list[dict]]:
    """Find candidate files. Returns (candidates, class names, files outside any class folder)."""
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} does not exist or is not a folder",
            "pass a folder laid out as root/<class>/<image> (or root/train/<class>/<image>)",
        )
    top = _class_dirs(root)
    split_layout = any(d.name == "train" for d in top) and all(d.name in SPLITS for d in top)
    if not split_layout and any(d.name in ("train", "test") for d in top):
        raise DataError(
            f"{root} mixes split folders (train/, val/, test/) with other folders: "
            f"{', '.join(d.name for d in top)}",
            "either put every class under train/ (and optionally val/, test/), or use root/<class>/ only",
        )
    groups = [(d, d.name) for d in top] if split_layout else [(root, None)]
    candidates: list[Candidate] = []
    stray: list[dict] = []
    classes: set[str] = set()
    for folder, split in groups:
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            stray.append({"path": str(f.relative_to(root)), "reason": "file outside any class folder"})
        for class_dir in _class_dirs(folder):
            classes.add(class_dir.name)
            for f in sorted(p for p in class_dir.rglob("*") if p.is_file()):
                candidates.append(Candidate(f, str(f.relative_to(root)), class_dir.name, split))
    if not classes:
        raise DataError(
            f"{root} has no class folders",
            "lay the images out as root/<class>/<image>, one subfolder per class",
        )
    return candidates, sorted(classes), stray


RESIZE_MODES = get_args(ResizeMode)


def resize_to_square(img, size: int, resize: str = "squash"):
    """Bring a PIL image to ``size`` x ``size`` (bilinear).

    ``squash`` resizes straight to the square, ignoring the aspect ratio. ``short_side`` resizes the
    short side to ``size`` (long side rounded to the nearest pixel, never below ``size``) and then
    crops the centre with torchvision ``CenterCrop``'s arithmetic. That is the ``Resize`` +
    ``CenterCrop`` evaluation transform pretrained teachers saw, so objects keep their shape
    (torchvision's ``Resize`` truncates the long side rather than rounding it, so the two can
    differ by one pixel before the crop).
    """
    from PIL import Image

    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, not {resize!r}")
    w, h = img.size
    if (w, h) == (size, size):
        return img  # already the right square: both modes leave it untouched
    if resize == "squash":
        return img.resize((size, size), Image.Resampling.BILINEAR)
    if w <= h:
        new_w, new_h = size, max(size, int(round(h * size / w)))
    else:
        new_w, new_h = max(size, int(round(w * size / h))), size
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    # torchvision CenterCrop: top = round((h - size) / 2), left likewise.
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def decode_one(c: Candidate, size: int, resize: str = "squash") -> Decoded:
    """Hash and decode one file; bring it to ``size`` x ``size`` RGB (see ``resize_to_square``)."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    data = c.path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()

    def dropped(reason: str) -> Decoded:
        return Decoded(c.rel, c.label_name, c.split, sha, None, reason)

    if not data:
        return dropped("empty file")
    # A truncated file must fail, not decode to a half-grey picture.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except UnidentifiedImageError:
        return dropped("not an image")
    except Image.DecompressionBombError as exc:
        return dropped(f"image too large: {exc}")
    except (OSError, SyntaxError, ValueError) as exc:
        return dropped(f"truncated or corrupt image: {exc}")
    rgb = resize_to_square(rgb, size, resize)
    return Decoded(c.rel, c.label_name, c.split, sha, np.asarray(rgb, dtype=np.uint8).copy(), None)


def _decode_chunk(args: tuple[list[Candidate], int, str]) -> list[Decoded]:
    chunk, size, resize = args
    return [decode_one(c, size, resize) for c in chunk]


def decode_all(
    candidates: list[Candidate], size: int, workers: int | None = None, resize: str = "squash"
) -> list[Decoded]:
    """Decode every candidate, in order; across processes when there are many."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(candidates) < 2000:
        return [decode_one(c, size, resize) for c in candidates]
    step = 512
    chunks = [(candidates[i : i + step], size, resize) for i in range(0, len(candidates), step)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [d for part in pool.map(_decode_chunk, chunks) for d in part]
