"""Scan and decode an image-folder dataset.

Layouts accepted (the ones Keras' ``flow_from_directory`` and torchvision's ``ImageFolder`` read):

    root/<class>/<file>                       no predefined split
    root/{train,val,test}/<class>/<file>      predefined splits (``train`` required, others optional)

The folder may be local or an S3 prefix (``kdflow.data.source`` lists and reads both alike). Files
below a class folder are found recursively. Every file is read once: its bytes give the
content hash (duplicate detection, stable sample id) and are decoded with Pillow. A file that does
not decode completely is dropped with a reason; nothing is silently skipped.
"""

from __future__ import annotations

import hashlib
import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from kdflow.config import ResizeMode
from kdflow.data.source import SourceListing, is_remote, read_source_bytes
from kdflow.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file found in a class folder, before decoding."""

    path: Path | str  # a local path, or an s3:// URI (see kdflow.data.source.read_source_bytes)
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


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan(listing: SourceListing) -> tuple[list[Candidate], list[str], list[dict]]:
    """Find candidate files. Returns (candidates, class names, files outside any class folder).

    Works on the listing's relative paths, so a local folder and its copy on S3 scan alike.
    """
    root = listing.root
    # The parts of each path are split again where needed rather than kept: a list of them for every
    # file would be the largest allocation of a scan of a million files.
    folders = {p[:i] for p in (tuple(f.rel.split("/")) for f in listing.files) for i in range(1, len(p))}
    folders |= {tuple(d.split("/"))[:i] for d in listing.empty_dirs for i in range(1, d.count("/") + 2)}

    def subfolders(parent: tuple[str, ...]) -> list[str]:
        n = len(parent)
        return sorted(f[n] for f in folders if len(f) == n + 1 and f[:n] == parent and _visible(f[n]))

    top = subfolders(())
    split_layout = "train" in top and all(d in SPLITS for d in top)
    if not split_layout and any(d in ("train", "test") for d in top):
        raise DataError(
            f"{root} mixes split folders (train/, val/, test/) with other folders: {', '.join(top)}",
            "either put every class under train/ (and optionally val/, test/), or use root/<class>/ only",
        )
    # (folder, predefined split): the folders whose subfolders are classes.
    class_parents = [((d,), d) for d in top] if split_layout else [((), None)]
    candidates: list[Candidate] = []
    stray: list[dict] = []
    classes: set[str] = set()
    in_class: dict[tuple[str, ...], list] = {}
    for f in listing.files:
        p = f.rel.split("/")
        if len(p) == 1 or (split_layout and len(p) == 2 and p[0] in top):
            stray.append({"path": f.rel, "reason": "file outside any class folder"})
        else:
            in_class.setdefault(tuple(p[: 2 if split_layout else 1]), []).append(f)
    for folder, split in class_parents:
        for name in subfolders(folder):
            classes.add(name)
            for f in in_class.get(folder + (name,), []):
                candidates.append(Candidate(f.location, f.rel, name, split))
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


def decode_one(c: Candidate, size: int, resize: str = "squash", data: bytes | None = None) -> Decoded:
    """Hash and decode one file (``data``: its bytes, when already fetched); bring it to ``size`` x
    ``size`` RGB (see ``resize_to_square``)."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    if data is None:
        data = read_source_bytes(c.path)
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


FETCH_THREADS = 16  # concurrent GETs per process when the files are S3 objects


def decode_chunk(chunk: list[Candidate], size: int, resize: str = "squash") -> list[Decoded]:
    """Decode a few hundred candidates, in order (preprocess holds one such chunk at a time)."""
    if any(not isinstance(c.path, Path) and is_remote(c.path) for c in chunk):
        # One S3 GET is a round trip of milliseconds: fetch a chunk's objects concurrently (in
        # order), then decode. Local files are read as they are decoded.
        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            blobs = list(pool.map(read_source_bytes, [c.path for c in chunk]))
        return [decode_one(c, size, resize, data) for c, data in zip(chunk, blobs)]
    return [decode_one(c, size, resize) for c in chunk]
