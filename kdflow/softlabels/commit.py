"""Committing soft-label view manifests: numbered generations, each created at most once.

A view's manifest is not one object rewritten in place but a folder of generations,
``manifests/00000000.json``, ``00000001.json``, ... A committer writes generation ``g + 1`` (``g``:
the highest it listed) with ``Storage.write_if_absent``, a conditional create: exactly one writer
creates a given generation, every other one is told it lost and nothing of it is written. A loser
reads the winner's manifest, checks it, and uses it; it never overwrites it. Readers list the
folder and use the highest generation that reads and verifies (``latest``). A new generation is
committed only when the files change (a shard relabelled to other bytes after it was found
corrupt); a rerun whose files are those of the newest manifest commits nothing.

The entry (``entries/<key>.json``) names view keys only, and every sound entry of a key names the
same views, so it is one object created with the same conditional write; one that does not read is
replaced (cache.py, ``SoftLabelCache._commit_entry``).

Why it is safe:

* Every manifest names only view shard files that its committer read back whole and checked, and
  those files are content-addressed (shardfile.view_file: the name carries the sha256 of the
  bytes). Nothing in kdflow deletes a shard file, and a writer that puts bytes at an existing name
  puts the same bytes (same digest, same name), so a committed manifest can never be invalidated by
  another run: the lost-update of an in-place ``manifest.json`` (one writer's digests, the other's
  bytes) cannot happen.
* S3: a PUT of a whole object is atomic (a reader sees the old object or the new one, never a mix),
  listings and reads are strongly consistent (since December 2020), and ``PutObject`` with
  ``If-None-Match: *`` is a conditional create (412 PreconditionFailed when the key exists), honoured
  by AWS S3 since August 2024 and by MinIO.
* A POSIX file system: a file is written beside its target and renamed (rename is atomic), and the
  conditional create is ``os.link`` of the finished temp file, which fails with EEXIST when the
  target exists (kdflow.storage.LocalStorage.write_if_absent).
* Even if a store let two writers both "create" one generation (a conditional create that is not
  atomic), each of their manifests names only valid, immutable files, so whichever survives is a
  complete, consistent manifest; entries carry no time stamp, so racing commits of one entry write
  the same bytes.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import PurePosixPath
from typing import Any, Callable, TypeVar

from kdflow.util.errors import CacheError
from kdflow.softlabels.manifest import ViewManifest
from kdflow.softlabels.shardfile import parse_view_file
from kdflow.storage import ObjectInfo, Storage, join

log = logging.getLogger(__name__)

_GENERATION = re.compile(r"^(\d{8})\.json$")
ATTEMPTS = 16  # generations a committer tries before giving up: each lost one was won by a valid manifest
T = TypeVar("T")


def _normal(uri: str) -> str:
    """A URI as a listing spells it: a local store lists pathlib paths (``./c`` as ``c``, ``a//b`` as ``a/b``)."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    scheme, path = ("file://", uri[len("file://"):]) if uri.startswith("file://") else ("", uri)
    return scheme + str(PurePosixPath(path))


def children(listing: list[ObjectInfo], prefix: str) -> dict[str, ObjectInfo]:
    """{name: info} of the objects directly below ``prefix`` in a (recursive) listing."""
    base = _normal(prefix).rstrip("/") + "/"
    out = {}
    for info in listing:
        uri = _normal(info.uri)
        if uri.startswith(base) and "/" not in uri[len(base):]:
            out[uri[len(base):]] = info
    return out


def generations(listing: list[ObjectInfo], prefix: str) -> dict[int, str]:
    """{generation: URI} of the numbered manifests directly below ``prefix``."""
    return {int(m[1]): info.uri for name, info in children(listing, prefix).items() if (m := _GENERATION.match(name))}


def read_manifest(store: Storage, uri: str, fmt: str, key: str) -> dict[str, Any] | None:
    """A manifest's JSON when it is one of this format and key; None (logged) when it is not."""
    raw = store.read_bytes(uri)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("soft-label manifest %s is unreadable; ignored", uri)
        return None
    if not isinstance(data, dict) or data.get("format") != fmt or data.get("key") != key:
        log.warning("soft-label manifest %s is not of key %s (format %s); ignored", uri, key[:12], fmt)
        return None
    return data


def latest(store: Storage, listing: list[ObjectInfo], prefix: str, fmt: str, key: str,
           accept: Callable[[dict[str, Any]], T | None]) -> tuple[int, T | None]:
    """(the highest generation present, -1 when none; the newest manifest that reads and that ``accept``
    parses and accepts, as ``accept`` returns it, or None). Older generations stand in for a newer one
    that does not verify."""
    gens = generations(listing, prefix)
    for gen in sorted(gens, reverse=True):
        raw = read_manifest(store, gens[gen], fmt, key)
        manifest = accept(raw) if raw is not None else None
        if manifest is not None:
            return max(gens), manifest
    return max(gens, default=-1), None


def commit_next(store: Storage, prefix: str, after: int, body: dict[str, Any],
                accept: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """Create generation ``after + 1`` holding ``body``, or use the one a concurrent run created first.

    Returns the manifest now committed: ``body``, or the winner's when it is accepted. A winner that is
    not (unreadable, or naming files that are gone) is left alone and the next generation tried.
    """
    data = json.dumps(body, indent=2).encode()
    for gen in range(after + 1, after + 1 + ATTEMPTS):
        uri = join(prefix, f"{gen:08d}.json")
        if store.write_if_absent(uri, data):
            return body
        winner = read_manifest(store, uri, body["format"], body["key"])
        if winner is not None and accept(winner):
            log.info("%s: generation %d was committed by a concurrent run first; using it", what, gen)
            return winner
        log.warning("%s: generation %d, committed by another run, does not verify; trying the next", what, gen)
    raise CacheError(f"{what}: could not commit a manifest after {ATTEMPTS} generations at {prefix}, each "
                     "taken by another run's manifest that does not verify",
                     f"check what writes to {prefix}; deleting that folder makes the next run relabel it")


class ViewState:
    """One listing of a view's folder: its shard files by stem, and its newest verifying manifest."""

    def __init__(self, files: dict[str, int], top: int, manifest: ViewManifest | None, rejected: list[str]):
        self.files, self.top, self.manifest = files, top, manifest  # files: {name: size}
        self.rejected = rejected  # why newer generations were not used
        self.by_stem: dict[str, list[str]] = {}
        for name in sorted(files):
            self.by_stem.setdefault(parse_view_file(name)[0], []).append(name)

    def named(self, split: str, index: int) -> str | None:
        """The file the current manifest names for a dataset shard (tried first: it is what readers use)."""
        shard = self.manifest.shard(split, index) if self.manifest is not None else None
        return shard.file if shard is not None else None
