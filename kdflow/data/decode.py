"""Phase 1 of preprocessing: a folder's files decoded into spools, part by part.

Part k of n (a contiguous slice of the scanned file list) is read, hashed and decoded, a chunk at a
time, into one spool file (``kdflow.data.spool``): the images on disk, a few dozen bytes of metadata
per file, and each picture's perceptual hash when ``data.group_by`` is ``phash`` (so phase 2 never
decodes). ``decode_part`` runs one part (a pipeline task); ``kdflow.data.preprocess`` runs them all in
a process pool, then phase 2.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdflow.config import DataConfig
from kdflow.data.groups import phash_batches
from kdflow.data.imagefolder import Candidate, decode_chunk, scan
from kdflow.data.source import SourceListing, fingerprint_listing, is_remote, list_source
from kdflow.data.spool import SpoolWriter, listing_digest, part_bounds, place, spool_is_valid, spool_key, spool_uri
from kdflow.storage import local_path
from kdflow.util.errors import ConfigError, DataError
from kdflow.util.progress import Progress

DECODE_CHUNK = 256  # files decoded (and, from S3, fetched) together: the only images phase 1 holds


@dataclass
class Scan:
    """A scanned folder. The candidates are the largest thing a preprocess run holds that grows with
    the folder (a few hundred bytes per file): ``release`` drops them once the spools' metadata has
    been checked against them, before the shards are written."""

    root: str
    key: str  # listing_digest: names the spools
    candidates: list[Candidate] | None
    class_names: list[str]
    stray: list[dict]
    count: int  # candidates, also after release

    def release(self) -> None:
        self.candidates = None


def scanned(listing: SourceListing, expected_source: str) -> Scan:
    """The folder's candidates and classes; ``expected_source``: the content fingerprint it must still
    have (empty: not checked)."""
    root = listing.root
    if expected_source and fingerprint_listing(listing) != expected_source:
        raise DataError(f"the data under {root} changed after the run started (its content fingerprint is no "
                        f"longer {expected_source[:12]})",
                        "run the pipeline again; do not change a dataset folder while a run reads it")
    candidates, class_names, stray = scan(listing)
    if len(class_names) < 2:
        raise DataError(f"{root} has {len(class_names)} class folder(s)", "a classifier needs at least 2 classes")
    return Scan(root, listing_digest(listing), candidates, class_names, stray, len(candidates))


def _check_parts(part: int, parts: int) -> None:
    if parts < 1 or not 0 <= part < parts:
        raise ConfigError(f"decode part {part} of {parts} does not exist", "use 0 <= part < parts, parts >= 1")


def parts_for(files: int, files_per_part: int) -> int:
    """Parts of at most ``files_per_part`` files each (at least one part)."""
    return max(1, math.ceil(files / max(1, files_per_part)))


def plan_parts(data_uri: str, files_per_part: int) -> int:
    """How many parts a fan-out of phase 1 uses for ``data_uri`` (one decode task per part)."""
    candidates, _, _ = scan(list_source(data_uri))
    return parts_for(len(candidates), files_per_part)


@dataclass(frozen=True)
class DecodeJob:
    """One part's decoding: its candidates into the spool at ``uri``. Picklable, so that a process
    pool can run it."""

    candidates: list[Candidate]
    uri: str
    key: str  # spool_key: what the spool holds
    size: int  # data.image_size
    resize: str  # data.resize
    with_phash: bool  # data.group_by == "phash"
    scratch: str  # a local folder for the spool while it is written
    max_bytes: int = 0  # data.max_file_bytes

    def run(self, show: bool = False) -> str:
        """Decode into the spool at ``uri``, kept if already there; returns ``uri``. Nothing is left
        at ``uri`` unless the spool is complete."""
        if spool_is_valid(self.uri):
            return self.uri
        cols: dict[str, list] = {k: [] for k in ("rel", "label", "split", "sha256", "reason", "row")}
        hashes: list[str] = []
        writer = SpoolWriter(Path(self.scratch), self.size)
        bar = Progress(len(self.candidates), "preprocess: decode", "img") if show else None
        try:
            for start in range(0, len(self.candidates), DECODE_CHUNK):
                decoded = decode_chunk(self.candidates[start:start + DECODE_CHUNK], self.size, self.resize,
                                       self.max_bytes)
                for d in decoded:
                    cols["rel"].append(d.rel)
                    cols["label"].append(d.label_name)
                    cols["split"].append(d.split)
                    cols["sha256"].append(d.sha256)
                    cols["reason"].append(d.reason)
                    cols["row"].append(-1 if d.image is None else writer.add(d.image))
                if self.with_phash:  # from the decoded pixels, now: phase 2 never decodes
                    ok = [d.image for d in decoded if d.image is not None]
                    hashes.extend(f"{int(h):016x}" for h in phash_batches(
                        np.stack(ok) if ok else np.zeros((0, self.size, self.size, 3), np.uint8)))
                if bar is not None:
                    bar.advance(len(decoded))
                del decoded
            if self.with_phash:  # one hash per file: dropped files get none
                it = iter(hashes)
                cols["phash"] = [None if r < 0 else next(it) for r in cols["row"]]
            tmp = writer.finish({"key": self.key, "files": cols})
        except BaseException:
            writer.abort()
            raise
        finally:
            if bar is not None:
                bar.close()
        place(tmp, self.uri)
        return self.uri


def part_job(listing_key: str, work_root: str, cfg: DataConfig, part: int, parts: int,
             candidates: list[Candidate]) -> DecodeJob:
    """The decoding of one part; ``listing_key``: ``listing_digest`` of the folder."""
    lo, hi = part_bounds(len(candidates), part, parts)
    key = spool_key(listing_key, part, parts, cfg.image_size, cfg.resize, cfg.group_by == "phash",
                    cfg.max_file_bytes)
    uri = spool_uri(work_root, part, parts, key)
    scratch = tempfile.gettempdir() if is_remote(work_root) else str(local_path(uri).parent)
    return DecodeJob(candidates[lo:hi], uri, key, cfg.image_size, cfg.resize, cfg.group_by == "phash", scratch,
                     cfg.max_file_bytes)


def decode_part(listing_or_data_uri: SourceListing | str, work_root: str, cfg: DataConfig, part: int,
                parts: int) -> str:
    """Phase 1 for ``part`` of ``parts``: decode that slice of the folder's (scan-ordered) files into
    one spool under ``work_root`` (local or ``s3://``); returns its URI. Kept if already there."""
    _check_parts(part, parts)
    listing = (listing_or_data_uri if isinstance(listing_or_data_uri, SourceListing)
               else list_source(listing_or_data_uri))
    folder = scanned(listing, "")
    return part_job(folder.key, work_root, cfg, part, parts, folder.candidates).run(show=True)
