"""Scan and decode an image-folder dataset.

Layouts accepted (the ones Keras' ``flow_from_directory`` and torchvision's ``ImageFolder`` read):

    root/<class>/<file>                       no predefined split
    root/{train,val,test}/<class>/<file>      predefined splits (``train`` required, others optional)

The folder may be local or an S3 prefix (``kdflow.data.source`` lists and reads both alike). Files
below a class folder are found recursively. Every file is read once: its bytes give the
content hash (duplicate detection, stable sample id) and are decoded with Pillow. A file that does
not decode completely is dropped with a reason; nothing is silently skipped.

Hostile input, and what it becomes (each a reason in the preprocessing report):
- a file over ``data.max_file_bytes`` (by its listed size, before any byte is read; a local file is
  also read with that bound, in case it grew): "file too large";
- a picture declaring more than ``MAX_PIXELS`` pixels (a decompression bomb: a 100-byte PNG can
  declare 100000 x 100000): "image too large", judged from the header, before decoding;
- an empty, truncated or corrupt file, or one that is not an image whatever its name says;
- a file the process may not read (permissions): "cannot read".

Every picture becomes 8-bit RGB the same way, whatever its mode (``to_rgb``): 16-bit samples are
scaled (the high byte, as Pillow itself reads 16-bit RGB), never clipped; transparency (RGBA, LA,
palette or grey with a transparent colour) is composited over white, because the colour stored under
a transparent pixel is arbitrary (encoders write black, white or leftovers there) and white is
what a viewer shows.
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
from kdflow.util.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A file found in a class folder, before decoding."""

    path: Path | str  # a local path, or an s3:// URI (see kdflow.data.source.read_source_bytes)
    rel: str  # path relative to the dataset root, for reports
    label_name: str
    split: str | None  # predefined split, or None
    size: int = -1  # bytes, as listed (-1: unknown; the read is bounded instead)


@dataclass(frozen=True)
class Decoded:
    rel: str
    label_name: str
    split: str | None
    sha256: str
    image: np.ndarray | None  # uint8 [size, size, 3], None when dropped
    reason: str | None  # why it was dropped


def _visible(name: str) -> bool:
    # Hidden folders and a volume's lost+found (a file system's own, at the root of ext4) are no class.
    return not name.startswith(".") and name != "lost+found"


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
    stray: list[dict] = list(listing.skipped)  # symlinks out of the root, fifos, ...: reported, never read
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
                candidates.append(Candidate(f.location, f.rel, name, split, f.size))
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


# Pillow's own default limit (Image.MAX_IMAGE_PIXELS, ~89.5 Mpx, a 9459 x 9459 picture), fixed here
# rather than read from the global a library or a user may have changed or set to None. Checked from
# the header, before the pixels are decoded (RGB of that size is 268 MB).
MAX_PIXELS = 89_478_485
UNREAD_SHA = "0" * 64  # a file never read (too large) has no content hash; dropped files' hashes are unused
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# The raster formats photos and datasets come in (torchvision's ImageFolder list, plus GIF and AVIF).
# Pillow would open more, some through outside programs (EPS runs Ghostscript on the file's
# PostScript): a hostile file with an image name must not reach those.
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "PPM", "AVIF")


def _formats() -> list[str]:
    from PIL import Image

    Image.init()
    return [f for f in FORMATS if f in Image.OPEN]  # AVIF needs a Pillow built with it


def too_large(c: Candidate, max_bytes: int) -> bool:
    return max_bytes > 0 and c.size > max_bytes


def to_rgb(img):
    """A decoded PIL image as 8-bit RGB (see the module docstring for the rules)."""
    from PIL import Image

    if img.mode in _SIXTEEN_BIT:
        # Pillow's convert clips 16-bit values at 255 (a 16-bit grey picture turns almost white).
        # "I" is how some Pillow versions and TIFF give 16-bit grey: read as 16-bit samples too.
        v = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return Image.fromarray((v >> 8).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")  # applies a palette's or a grey/RGB picture's transparent colour
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _unsupported(data: bytes) -> str | None:
    """Why a file none of FORMATS reads was refused, when Pillow knows its format; the header is
    only identified (no plugin's decoder runs)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            kind = img.format
    except Exception:  # noqa: BLE001 - any failure means: not a picture Pillow knows
        return None
    return f"unsupported image format {kind} (kdflow reads {', '.join(_formats())})"


def decode_one(c: Candidate, size: int, resize: str = "squash", data: bytes | None = None,
               max_bytes: int = 0) -> Decoded:
    """Hash and decode one file (``data``: its bytes, when already fetched); bring it to ``size`` x
    ``size`` RGB (see ``resize_to_square``). ``max_bytes`` > 0: a file larger than that is dropped
    unread."""
    import warnings

    from PIL import Image, ImageFile, UnidentifiedImageError

    def dropped(reason: str, sha: str = UNREAD_SHA) -> Decoded:
        return Decoded(c.rel, c.label_name, c.split, sha, None, reason)

    too_big = f"file too large: over data.max_file_bytes ({max_bytes} bytes)"
    if too_large(c, max_bytes):
        return dropped(f"{too_big}: {c.size} bytes")
    if data is None:
        try:
            data = read_source_bytes(c.path, max_bytes)
        except OSError as exc:  # local files only: S3 failures are StorageErrors, not per-file verdicts
            return dropped(f"cannot read: {exc.strerror or exc}")
    if max_bytes > 0 and len(data) > max_bytes:  # it grew after it was listed
        return dropped(f"{too_big}: more than {max_bytes} bytes when read")
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return dropped("empty file", sha)
    # A truncated file must fail, not decode to a half-grey picture.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Between MAX_PIXELS and twice that Pillow only warns; the check below decides instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_formats()) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    return dropped(f"image too large: it declares {w}x{h} pixels, over {MAX_PIXELS} "
                                   "(a possible decompression bomb; not decoded)", sha)
                img.load()
                rgb = to_rgb(img)
    except UnidentifiedImageError:
        return dropped(_unsupported(data) or "not an image", sha)
    except Image.DecompressionBombError as exc:
        return dropped(f"image too large (a possible decompression bomb; not decoded): {exc}", sha)
    except (OSError, SyntaxError, ValueError) as exc:
        return dropped(f"truncated or corrupt image: {exc}", sha)
    except Exception as exc:  # a decoder bug on crafted bytes is this file's problem, not the run's
        return dropped(f"cannot decode ({type(exc).__name__}): {exc}", sha)
    rgb = resize_to_square(rgb, size, resize)
    return Decoded(c.rel, c.label_name, c.split, sha, np.asarray(rgb, dtype=np.uint8).copy(), None)


FETCH_THREADS = 16  # concurrent GETs per process when the files are S3 objects


def decode_chunk(chunk: list[Candidate], size: int, resize: str = "squash", max_bytes: int = 0) -> list[Decoded]:
    """Decode a few hundred candidates, in order (preprocess holds one such chunk at a time)."""
    if any(not isinstance(c.path, Path) and is_remote(c.path) for c in chunk):
        # One S3 GET is a round trip of milliseconds: fetch a chunk's objects concurrently (in
        # order), then decode. Local files are read as they are decoded. An object over the cap
        # (by its listed size) is never fetched.
        def fetch(c: Candidate) -> bytes | None:
            return None if too_large(c, max_bytes) else read_source_bytes(c.path)

        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            blobs = list(pool.map(fetch, chunk))
        return [decode_one(c, size, resize, data, max_bytes) for c, data in zip(chunk, blobs)]
    return [decode_one(c, size, resize, None, max_bytes) for c in chunk]
