"""The bad-input matrix: hostile and broken datasets through the real preprocess step.

Each bad folder either fails the step with a DataError naming the problem and the fix, leaving the
output folder empty (no manifest, no shard, no report), or, for a problem of one file, builds the
dataset with that file dropped and a reason for it in report.json. Teachers, configs and schedules:
tests/faults/test_bad_input_teacher.py. Pictures are generated here (no ../shared).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kdflow.data.source as source_module
from kdflow.data.shards import DatasetManifest
from kdflow.util.errors import DataError
from kdflow.steps.preprocess import run_preprocess
from tests.helpers import class_image, jpeg_bytes, png_bytes

CONFIG = "data: {image_size: 8, val_fraction: 0.2, test_fraction: 0.2, seed: 0, max_file_bytes: %d}\n"
CAP = 4096  # data.max_file_bytes in these tests: every generated 12-px picture is far below it
AS_ROOT = os.geteuid() == 0  # root reads a chmod 000 file: that case is simulated (see _Reads)


def _good(root: Path, classes=("apple", "kiwi", "plum"), n: int = 4) -> Path:
    for li, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i:03d}.png").write_bytes(png_bytes(class_image(li, seed=li * 100 + i)))
    return root


def _saved(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_declaring(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header declares width x height RGB pixels: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


def _preprocess(root: Path, out: Path, cap: int = CAP) -> dict:
    return run_preprocess(str(root), CONFIG % cap, str(out))


# --- folder-level problems: a clear error, nothing written -------------------------------------------

def _empty_root(root):
    root.mkdir()


def _one_class(root):
    _good(root, classes=("apple",))


def _class_of_broken_files(root):
    _good(root, classes=("apple", "kiwi"))
    bad = root / "plum"
    bad.mkdir()
    good = png_bytes(class_image(2, seed=7))
    (bad / "zero.png").write_bytes(b"")
    (bad / "half.png").write_bytes(good[: len(good) // 2])
    (bad / "notes.jpg").write_text("not a picture")


def _empty_class_folder(root):
    _good(root, classes=("apple", "kiwi"))
    (root / "plum").mkdir()


def _class_of_outside_links(root):
    _good(root, classes=("apple", "kiwi"))
    outside = root.parent / "outside.png"
    outside.write_bytes(png_bytes(class_image(2, seed=9)))
    (root / "plum").mkdir()
    (root / "plum" / "link.png").symlink_to(outside)


def _class_in_two_classes(root):
    _good(root, classes=("apple", "kiwi"))
    (root / "plum").mkdir()
    (root / "plum" / "same.png").write_bytes((root / "apple" / "000.png").read_bytes())


def _nothing_readable(root):
    for name in ("apple", "kiwi"):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def _mixed_layout(root):
    _good(root / "train", classes=("apple", "kiwi"))
    (root / "apple").mkdir()


FOLDER_ERRORS = [
    # (case, builder, problem regex, fix regex)
    ("empty folder", _empty_root, "has no class folders", "one subfolder per class"),
    ("one class only", _one_class, "has 1 class folder", "at least 2 classes"),
    ("a class folder with no readable image", _class_of_broken_files,
     r"kept no readable image: 'plum' \(.*plum/half.png: truncated or corrupt.*plum/notes.jpg: not an image",
     "add readable images"),
    ("an empty class folder", _empty_class_folder, r"'plum' \(no files at all\)", "or remove the folders"),
    ("a class of symlinks out of the root", _class_of_outside_links,
     r"'plum' \(plum/link.png: symlink to a file outside the dataset root", "add readable images"),
    ("a class whose pictures are all filed under another class", _class_in_two_classes,
     r"'plum' \(plum/same.png: identical file filed under different classes", "add readable images"),
    ("no readable file at all", _nothing_readable, "no readable images in .*truncated or corrupt", "check the files"),
    ("split folders mixed with class folders", _mixed_layout, "mixes split folders", "train/"),
]


@pytest.mark.parametrize("case,build,problem,fix", FOLDER_ERRORS, ids=[c[0] for c in FOLDER_ERRORS])
def test_a_bad_folder_is_a_clear_error_and_writes_nothing(tmp_path, case, build, problem, fix):
    root, out = tmp_path / "data", tmp_path / "out"
    build(root)
    with pytest.raises(DataError) as err:
        _preprocess(root, out)
    assert re.search(problem, err.value.problem), err.value.problem
    assert err.value.fix and re.search(fix, err.value.fix), err.value.fix
    assert _nothing_written(out), sorted(out.rglob("*"))


def test_an_unlistable_class_folder_is_an_error_not_a_vanished_class(tmp_path, monkeypatch):
    root, out = _good(tmp_path / "data"), tmp_path / "out"
    locked = root / "plum"
    if AS_ROOT:  # root lists a chmod 000 folder: make the listing fail as the kernel would for a user
        real = os.scandir

        def scandir(path="."):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        with pytest.raises(DataError, match="cannot list folder plum under .*Permission denied") as err:
            _preprocess(root, out)
    finally:
        locked.chmod(0o755)
    assert "chmod" in err.value.fix
    assert _nothing_written(out)


def test_an_unlistable_lost_and_found_or_hidden_folder_is_reported_not_fatal(tmp_path, monkeypatch):
    """ext4's root-only lost+found at a volume's root (or a hidden folder) is never a class: a pod that
    cannot list it reports it and goes on."""
    root, out = _good(tmp_path / "data"), tmp_path / "out"
    locked = [root / "lost+found", root / "plum" / ".snapshot", root / "kiwi" / ".git" / "objects"]
    for folder in locked:
        folder.mkdir(parents=True)
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) in {str(f) for f in locked}:  # int: a descriptor
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    summary = _preprocess(root, out)
    assert sum(summary["counts"].values()) == 12
    dropped = json.loads((out / "report.json").read_text())["dropped"]
    for rel in ("lost+found", "plum/.snapshot", "kiwi/.git/objects"):
        assert {"path": rel, "reason": "cannot list folder: Permission denied"} in dropped, dropped


def test_a_readable_lost_and_found_is_no_class(tmp_path):
    root, out = _good(tmp_path / "data"), tmp_path / "out"
    (root / "lost+found").mkdir()  # as a pod running as root sees an ext4 volume's root
    _preprocess(root, out)
    assert DatasetManifest.open(str(out)).class_names == ("apple", "kiwi", "plum")


def test_the_cli_step_exits_non_zero_with_problem_and_fix(tmp_path):
    """The step as a pipeline task runs it, in its own process: a non-zero exit, the message on
    stderr, and an empty output folder."""
    import subprocess
    import sys

    from tests.helpers import ROOT, hang_guard

    root, out = tmp_path / "data", tmp_path / "out"
    _class_of_broken_files(root)
    proc = subprocess.run([sys.executable, "-c", "import sys; from kdflow.steps.preprocess import run_preprocess; "
                           "run_preprocess(sys.argv[1], sys.argv[2], sys.argv[3])", str(root), CONFIG % CAP,
                           str(out)], capture_output=True, text=True, timeout=hang_guard(300),
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode != 0
    assert "DataError: class folder(s) under" in proc.stderr and "'plum'" in proc.stderr
    assert "fix: add readable images" in proc.stderr
    assert _nothing_written(out)


# --- per-file problems: one run, each file dropped with its reason ------------------------------------

class _Reads:
    """Every file kdflow's data source opens (the only reader of dataset bytes), refusing any
    outside the dataset root or not a regular file: a regression fails the assertions below
    instead of hanging on the fifo or reading the secret. As root, the chmod 000 file is refused
    here the way the kernel refuses it to any other user."""

    def __init__(self, root: Path, locked: Path):
        self.root, self.locked, self.paths = os.path.realpath(root), os.path.realpath(locked), []

    def __call__(self, path, *args, **kwargs):
        real = os.path.realpath(path)
        self.paths.append(real)
        if not real.startswith(self.root + os.sep) or not os.path.isfile(real):
            raise PermissionError(13, "refused by the test: outside the root or not a file", str(path))
        if AS_ROOT and real == self.locked:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)


def _hostile_folder(base: Path) -> tuple[Path, dict]:
    root = _good(base / "data")
    outside = base / "outside"
    (outside / "cats").mkdir(parents=True)
    (outside / "cats" / "c.png").write_bytes(png_bytes(class_image(0, seed=555)))
    (outside / "secret.png").write_bytes(png_bytes(class_image(1, seed=556)))
    good = png_bytes(class_image(0, seed=999))
    jpg = jpeg_bytes(class_image(1, seed=998))
    big = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    assert len(big) > CAP
    files = {
        "apple/zero.png": b"",
        "apple/truncated.png": good[: len(good) // 2],
        "apple/truncated.jpg": jpg[: len(jpg) // 2],
        "apple/corrupt.png": b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20,
        "kiwi/notes.png": b"just some text, named like a picture\n",
        "kiwi/document.jpg": b"%PDF-1.4\n1 0 obj << >> endobj\n",
        "kiwi/postscript.png": _saved(Image.new("RGB", (4, 4)), "EPS"),  # Pillow would hand it to Ghostscript
        "kiwi/bomb.png": _png_declaring(100_000, 100_000),
        "kiwi/bomb-small.png": _png_declaring(10_000, 10_000),  # where Pillow only warns
        "plum/huge.png": big,
        "plum/locked.png": png_bytes(class_image(2, seed=997)),
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    (root / "plum" / "locked.png").chmod(0)
    (root / "apple" / "secret.png").symlink_to(outside / "secret.png")
    (root / "apple" / "elsewhere").symlink_to(outside / "cats", target_is_directory=True)
    (root / "stolen").symlink_to(outside / "cats", target_is_directory=True)  # a whole class folder
    (root / "kiwi" / "gone.png").symlink_to(root / "kiwi" / "never-was.png")
    (root / "kiwi" / "alias.png").symlink_to(root / "kiwi" / "000.png")  # inside the root: followed
    os.mkfifo(root / "plum" / "pipe.png")
    with open(os.fsencode(root / "plum") + b"/\xff\xfe.png", "wb") as f:  # not UTF-8
        f.write(png_bytes(class_image(2, seed=996)))
    return root, outside


HOSTILE = [
    # (case, path in the report, reason it gives)
    ("zero-byte file", "apple/zero.png", "empty file"),
    ("truncated PNG", "apple/truncated.png", "truncated or corrupt image"),
    ("truncated JPEG", "apple/truncated.jpg", "truncated or corrupt image"),
    ("corrupt PNG", "apple/corrupt.png", ("truncated or corrupt image", "not an image")),
    ("text under an image name", "kiwi/notes.png", "not an image"),
    ("PDF under an image name", "kiwi/document.jpg", "not an image"),
    ("PostScript under an image name", "kiwi/postscript.png", "unsupported image format EPS"),
    ("decompression bomb (100000x100000 declared)", "kiwi/bomb.png", "image too large"),
    ("decompression bomb below Pillow's error", "kiwi/bomb-small.png",
     "image too large: it declares 10000x10000 pixels"),
    ("file over data.max_file_bytes", "plum/huge.png", f"file too large: over data.max_file_bytes ({CAP} bytes)"),
    ("chmod 000 file", "plum/locked.png", "cannot read: Permission denied"),
    ("file symlink out of the root", "apple/secret.png", "symlink to a file outside the dataset root"),
    ("folder symlink out of the root", "apple/elsewhere", "symlink to a folder outside the dataset root"),
    ("class folder symlink out of the root", "stolen", "symlink to a folder outside the dataset root"),
    ("dangling symlink", "kiwi/gone.png", "dangling symlink"),
    ("fifo under an image name", "plum/pipe.png", "not a regular file"),
    ("file name that is not UTF-8", "plum/\\xff\\xfe.png", "file name is not valid UTF-8"),
]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root, outside = _hostile_folder(base)
    hashed, reads = _Reads(root, root / "plum" / "locked.png"), _Reads(root, root / "plum" / "locked.png")
    with pytest.MonkeyPatch.context() as mp:
        # The pipeline's first step keys the run on the folder's content: it too reads inside only.
        mp.setattr(source_module, "open", hashed, raising=False)
        assert source_module.source_fingerprint(str(root))
        mp.setattr(source_module, "open", reads, raising=False)
        summary = _preprocess(root, base / "out")
    assert not [p for p in hashed.paths if not p.startswith(str(os.path.realpath(root)) + os.sep)]
    (root / "plum" / "locked.png").chmod(0o644)
    report = json.loads((base / "out" / "report.json").read_text())
    return summary, report, reads, root, outside, DatasetManifest.open(str(base / "out"))


@pytest.mark.parametrize("case,path,reason", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_a_hostile_file_is_dropped_with_its_reason(hostile_run, case, path, reason):
    _, report, *_ = hostile_run
    reasons = {e["path"]: e["reason"] for e in report["dropped"]}
    assert path in reasons, sorted(reasons)
    assert reasons[path].startswith(reason), reasons[path]


def test_the_hostile_run_keeps_exactly_the_good_pictures_and_reads_nothing_outside(hostile_run):
    summary, report, reads, root, outside, dataset = hostile_run
    assert dataset.class_names == ("apple", "kiwi", "plum")  # the outside "stolen" folder is no class
    assert summary["dropped"] == len(HOSTILE) == len(report["dropped"])
    # The symlink inside the root was followed: a duplicate of its target, not a drop.
    assert {"path": "kiwi/alias.png", "reason": "duplicate of kiwi/000.png"} in report["duplicates"]
    assert sum(summary["counts"].values()) == 12  # 4 good pictures per class, nothing else
    # The recorder saw the reads (not vacuous): every good picture was opened through it.
    assert len({p for p in reads.paths if p.endswith((".png", ".jpg"))}) >= 12
    assert not [p for p in reads.paths if not p.startswith(str(os.path.realpath(root)) + os.sep)]
    # Dropped unread: never opened (the cap is judged from the listed size).
    assert os.path.realpath(root / "plum" / "huge.png") not in reads.paths


def test_an_s3_object_over_the_cap_is_never_fetched(s3_bucket, tmp_path, monkeypatch):
    """On S3 the listed object size decides: the object is not downloaded at all."""
    from kdflow.data import imagefolder
    from tests.helpers import upload_folder

    root = _good(tmp_path / "data")
    (root / "plum" / "huge.png").write_bytes(b"\x89PNG" + b"\0" * (CAP + 1))
    uri = upload_folder(root, s3_bucket, "hostile")
    fetched = []
    real = imagefolder.read_source_bytes
    monkeypatch.setattr(imagefolder, "read_source_bytes", lambda loc, *a: fetched.append(loc) or real(loc, *a))
    summary = run_preprocess(uri, CONFIG % CAP, str(tmp_path / "out"))
    assert summary["dropped"] == 1 and sum(summary["counts"].values()) == 12
    assert len(fetched) == 12 and not [u for u in fetched if u.endswith("huge.png")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dropped"] == [{"path": "plum/huge.png", "reason": f"file too large: over data.max_file_bytes "
                                                                  f"({CAP} bytes): {CAP + 5} bytes"}]


# --- every picture mode decodes to the right RGB ------------------------------------------------------

def _mode_cases() -> dict[str, tuple[bytes, np.ndarray, int]]:
    """name -> (file bytes, expected uint8 [8, 8, 3], tolerance)."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    alpha = np.tile(np.array([0, 128, 255, 255], np.uint8), (8, 2))  # [8, 8]: transparent, half, opaque
    white = np.full((8, 8, 3), 255.0)

    def over_white(colour: np.ndarray, a: np.ndarray) -> np.ndarray:
        f = a[..., None] / 255.0
        return np.round(colour * f + white * (1 - f)).astype(np.uint8)

    cases = {
        "rgb.png": (_saved(Image.fromarray(rgb)), rgb, 0),
        "grey.png": (_saved(Image.fromarray(grey, "L")), np.repeat(grey[..., None], 3, -1), 0),
        "bilevel.png": (_saved(Image.fromarray(grey > 127).convert("1")),
                        np.repeat(np.where(grey > 127, 255, 0).astype(np.uint8)[..., None], 3, -1), 0),
        # 16-bit grey: g * 257 must come back as g, not clipped to 255.
        "grey16.png": (_saved(Image.fromarray(grey.astype(np.uint16) * 257)), np.repeat(grey[..., None], 3, -1), 0),
        "grey16.pgm": (_saved(Image.fromarray(grey.astype(np.uint16) * 257), "PPM"),  # opens as mode "I"
                       np.repeat(grey[..., None], 3, -1), 0),
        "cmyk.tif": (_saved(Image.fromarray(rgb).convert("CMYK"), "TIFF"), rgb, 0),
        "cmyk.jpg": (_saved(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100),
                     np.tile(np.array([255, 0, 0], np.uint8), (8, 8, 1)), 8),
        # RGBA whose transparent pixels hide garbage colour: composited over white.
        "rgba.png": (_saved(Image.fromarray(np.dstack([rgb, alpha]), "RGBA")), over_white(rgb, alpha), 1),
        "la.png": (_saved(Image.fromarray(np.dstack([grey, alpha]), "LA")),
                   over_white(np.repeat(grey[..., None], 3, -1), alpha), 1),
    }
    pal = Image.fromarray(rgb).quantize(16)  # a palette picture; index 0 made transparent below
    expected = np.asarray(pal.convert("RGB")).copy()
    expected[np.asarray(pal) == 0] = 255
    cases["palette-transparent.png"] = (_saved(pal, transparency=0), expected, 0)
    cases["palette.png"] = (_saved(Image.fromarray(rgb).quantize(32)),
                            np.asarray(Image.fromarray(rgb).quantize(32).convert("RGB")), 0)
    return cases


def test_every_picture_mode_decodes_to_the_right_rgb(tmp_path):
    root = _good(tmp_path / "data", classes=("other",), n=3)
    (root / "modes").mkdir()
    cases = _mode_cases()
    for name, (data, _, _) in cases.items():
        (root / "modes" / name).write_bytes(data)
    config = "data: {image_size: 8, val_fraction: 0.0, test_fraction: 0.0}\n"  # 8 px: no resize, all train
    summary = run_preprocess(str(root), config, str(tmp_path / "out"))
    assert summary["dropped"] == 0
    train = DatasetManifest.open(str(tmp_path / "out")).load_split("train")
    by_id = {str(i): img for i, img in zip(train.ids, train.images)}
    for name, (data, expected, tolerance) in cases.items():
        got = by_id[hashlib.sha256(data).hexdigest()[:16]]
        diff = np.abs(got.astype(int) - expected.astype(int)).max()
        assert diff <= tolerance, (name, diff)
