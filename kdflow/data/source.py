"""The raw input folder: listing it, reading its files, and a cheap identifier of its content.

A data URI is a local folder (a plain path or ``file://``) or an S3 prefix (``s3://bucket/prefix/``,
read through ``kdflow.storage``: endpoint and credentials from the environment). Both are seen the
same way, as files named by their '/'-separated path relative to the root, so the image-folder
layout rules (``kdflow.data.imagefolder``) and everything after them do not know where the bytes
came from: the same folder gives the same dataset, locally or from S3.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kdflow.storage.digest import digest_of
from kdflow.util.errors import DataError
from kdflow.storage import Storage, local_path, storage_for

SOURCE_FORMAT = "kdflow.source/1"


@dataclass(frozen=True, slots=True)  # slots: one per file, millions for ImageNet
class SourceFile:
    rel: str  # path relative to the root, '/'-separated
    # What read_source_bytes reads: a local path (a str: a Path object costs a few hundred bytes
    # more per file), or an s3:// URI.
    location: Path | str
    size: int
    etag: str | None  # S3 only: the object's ETag (content-derived)


@dataclass(frozen=True)
class SourceListing:
    root: str  # the data URI, normalised: a local path, or s3://bucket/prefix without the slash
    files: list[SourceFile]  # sorted by rel
    # Folders that hold no file, relative to the root: an empty local class folder (or an S3 folder
    # marker with nothing below it) still names a class, as it did before S3 was supported.
    empty_dirs: list[str]
    # Entries seen but never read ({"path", "reason"}: a symlink leading out of the root, a dangling
    # link, a fifo, a name that is not UTF-8): they go to the preprocessing report, not the dataset.
    skipped: list[dict] = field(default_factory=list)


def is_remote(data_uri: str) -> bool:
    return "://" in data_uri and not data_uri.startswith("file://")


def list_source(data_uri: str) -> SourceListing:
    """Every file below ``data_uri``; a missing or empty folder is a DataError that says what to pass."""
    if is_remote(data_uri):
        return _list_remote(data_uri)
    return _list_local(local_path(data_uri))


def _inside(real: str, real_root: str) -> bool:
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _utf8(name: str) -> bool:
    """Whether a name from the file system is valid UTF-8 (os.walk turns other bytes into lone
    surrogates, which no manifest, report or S3 key can hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(rel: str) -> str:
    return rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _list_local(root: Path) -> SourceListing:
    """List a local folder without reading any file.

    Symlinks: one that stays inside the dataset root (after resolving every link on the way) is
    followed, so a folder assembled from links into itself still reads; one that leads out of the
    root, file or folder, is skipped with a report entry and never opened: a dataset folder handed
    over by someone else must not make a run read /etc/shadow or another tenant's data. A folder
    that cannot be listed is an error (a class would silently vanish); a file that cannot be read
    is dropped with a reason when it is decoded.
    """
    if not root.is_dir():
        raise DataError(
            f"dataset folder {root} does not exist or is not a folder",
            "pass a folder laid out as root/<class>/<image> (or root/train/<class>/<image>)",
        )
    real_root = os.path.realpath(root)
    files: list[SourceFile] = []
    empty: list[str] = []
    skipped: list[dict] = []
    seen: set[tuple[int, int]] = set()

    def unlistable(exc: OSError) -> None:
        rel = Path(exc.filename or root).relative_to(root).as_posix() if exc.filename else "."
        if rel != "." and any(part.startswith(".") or part == "lost+found" for part in Path(rel).parts):
            # Never a class (hidden) or a file system's own (ext4's root-only lost+found): report, go on.
            skipped.append({"path": _printable(rel), "reason": f"cannot list folder: {exc.strerror or exc}"})
            return
        raise DataError(f"cannot list folder {_printable(rel)} under {root}: {exc.strerror or exc}",
                        "make it readable by the user running kdflow (chmod/chown), or remove it")

    # followlinks, checked below: a link inside the root to a folder inside the root is walked; the
    # (device, inode) set stops a link that points back up the tree from looping forever.
    for folder, dirnames, filenames in os.walk(root, followlinks=True, onerror=unlistable):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        rel_folder = Path(folder).relative_to(root).as_posix()
        prefix = "" if rel_folder == "." else f"{rel_folder}/"
        keep = []
        for name in dirnames:
            path = os.path.join(folder, name)
            if not _utf8(name):
                skipped.append({"path": _printable(prefix + name), "reason": "folder name is not valid UTF-8"})
            elif os.path.islink(path) and not _inside(os.path.realpath(path), real_root):
                skipped.append({"path": prefix + name,
                                "reason": "symlink to a folder outside the dataset root (not followed)"})
            else:
                keep.append(name)
        dirnames[:] = keep
        listed = len(files)
        for name in filenames:
            path = os.path.join(folder, name)
            reason = None
            try:
                st = os.lstat(path)
            except OSError as exc:  # removed while we listed
                st, reason = None, f"cannot stat: {exc.strerror or exc}"
            if st is not None and stat.S_ISLNK(st.st_mode):
                if not _inside(os.path.realpath(path), real_root):
                    reason = "symlink to a file outside the dataset root (not read)"
                else:
                    try:
                        st = os.stat(path)
                    except OSError:
                        reason = "dangling symlink"
            if reason is None and not _utf8(name):
                reason = "file name is not valid UTF-8"
            elif reason is None and not stat.S_ISREG(st.st_mode):
                reason = "not a regular file (a fifo, socket or device is never read)"
            if reason is None:
                files.append(SourceFile(prefix + name, path, st.st_size, None))
            else:
                skipped.append({"path": _printable(prefix + name), "reason": reason})
        # A folder with nothing usable below it (no file, or only skipped ones) still names a class,
        # so that preprocess can refuse that class by name rather than drop it unseen.
        if prefix and not dirnames and len(files) == listed:
            empty.append(rel_folder)
    # Path-component order ("a/b" before "a.b/c"): "\0" sorts below every character of a name. One
    # key string per file, not a list of parts: sort() holds every key at once.
    files.sort(key=lambda f: f.rel.replace("/", "\0"))
    skipped.sort(key=lambda e: e["path"])
    return SourceListing(str(root), files, sorted(empty), skipped)


def _list_remote(data_uri: str) -> SourceListing:
    root = data_uri.rstrip("/")
    objects = storage_for(root).list_info(root)  # paginated: any number of keys
    base = f"{root}/"
    files: list[SourceFile] = []
    markers: set[str] = set()
    for o in objects:
        rel = o.uri[len(base):]
        if not rel:
            continue
        if rel.endswith("/"):  # a zero-byte "folder" some S3 tools create
            markers.add(rel.rstrip("/"))
            continue
        files.append(SourceFile(rel, o.uri, o.size, o.etag))
    if not files and not markers:
        raise DataError(
            f"dataset prefix {data_uri} holds no objects",
            "check the bucket and prefix (keys laid out as prefix/<class>/<image> or "
            "prefix/train/<class>/<image>) and AWS_ENDPOINT_URL",
        )
    files.sort(key=lambda f: f.rel.replace("/", "\0"))
    holding = {"/".join(parts[:i]) for parts in (f.rel.split("/") for f in files) for i in range(1, len(parts))}
    empty = sorted(m for m in markers if m not in holding)
    return SourceListing(root, files, empty)


# One storage client per process: boto3 clients are thread-safe but must not cross a fork, and
# making one per file would cost a TLS handshake per image.
_STORES: dict[tuple[int, str], Storage] = {}


def read_source_bytes(location: Path | str, limit: int = 0) -> bytes:
    """The bytes of one listed file (a local Path or an s3:// URI). ``limit`` > 0: a local file is
    read to at most ``limit`` + 1 bytes, so one that grew past the cap after it was listed is seen
    to be too large without being read whole (S3 objects are checked by their listed size)."""
    if isinstance(location, Path) or not is_remote(location):
        with open(local_path(str(location)), "rb") as f:
            return f.read(limit + 1) if limit > 0 else f.read()
    key = (os.getpid(), location.split("://", 1)[0])
    if key not in _STORES:
        _STORES[key] = storage_for(location)
    return _STORES[key].read_bytes(location)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:  # e.g. chmod 000: preprocess drops it with a reason; the key still sees it
        return f"unreadable: errno {exc.errno}"
    return h.hexdigest()


def source_fingerprint(data_uri: str) -> str:
    """A content identifier of the raw input folder, cheap enough to compute before preprocessing.

    S3: a digest over (relative key, size, ETag) of every object under the prefix; the ETag is
    derived from the content, so no object is downloaded. Local folders: over (relative path, size,
    sha256 of the bytes) of every file. Adding, removing, renaming or changing any file changes it,
    and so does adding an empty folder (it would name a class). It does not depend on where the
    folder lies (two copies of one folder agree), but a folder and its S3 upload differ: one is
    keyed by sha256, the other by ETags.
    """
    return fingerprint_listing(list_source(data_uri))


def fingerprint_listing(listing: SourceListing) -> str:
    """``source_fingerprint`` of a listing already made (preprocess checks the one it reads)."""
    if is_remote(listing.root):
        kind = "s3-etag"
        rows = [[f.rel, f.size, f.etag] for f in listing.files]
    else:
        kind = "local-sha256"
        rows = [[f.rel, f.size, _sha256_file(Path(f.location))] for f in listing.files]
    return digest_of({"format": SOURCE_FORMAT, "kind": kind, "files": rows, "empty_dirs": listing.empty_dirs})
