"""The preprocess step: image folder in, verified shards and a manifest out, in bounded memory.

Two phases, so that neither holds the dataset and the first can fan out:

1. ``decode_part``: part k of n (a contiguous slice of the scanned file list) is read, hashed and
   decoded, a chunk at a time, into one spool file (``kdflow.data.spool``): the images on disk, a
   few dozen bytes of metadata per file.
2. ``assemble``: the metadata of all parts decides duplicates, groups and splits exactly as a
   single pass would; then each split's shards are filled one at a time from the spools (sorted by
   sample id), the train pixels counted into exact channel statistics, and the manifest written last.

``preprocess`` runs both on one machine (phase 1 in a process pool, spools in a temp folder); a
pipeline runs phase 1 as parallel tasks (``plan_parts`` says how many) and phase 2 once. How a
folder is cut into parts never changes the dataset: the same folder and settings give the same
shard bytes and fingerprint.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from kdflow import __version__
from kdflow.config import DataConfig
from kdflow.cpus import available_cpus
from kdflow.data.groups import PHASH, group_samples, phash_batches
from kdflow.data.imagefolder import Candidate, decode_chunk, scan
from kdflow.data.shards import FORMAT, DatasetManifest, ShardWriter, fingerprint, write_manifest
from kdflow.data.source import SourceListing, fingerprint_listing, is_remote, list_source
from kdflow.data.split import (SPLIT_METHOD, FileTable, assign_splits, check_every_class_kept, deduplicate,
                               dropped_summary)
from kdflow.data.spool import (
    SpoolReader,
    SpoolWriter,
    fetch,
    file_table,
    listing_digest,
    part_bounds,
    part_columns,
    place,
    read_meta,
    spool_is_valid,
    spool_key,
    spool_uri,
)
from kdflow.errors import ConfigError, DataError
from kdflow.progress import Progress
from kdflow.storage import join, local_path, storage_for

log = logging.getLogger(__name__)

DECODE_CHUNK = 256  # files decoded (and, from S3, fetched) together: the only images phase 1 holds
READ_BLOCK = 1024  # images read back from the spools per step while a shard fills
FILES_PER_LOCAL_PART = 2048  # preprocess on one machine: at most this many files per part ...
IN_PROCESS_FILES = 2000  # ... and no process pool below this many files


class ChannelHistogram:
    """Exact per-channel statistics of uint8 pixels, accumulated batch by batch.

    A uint8 channel has 256 values, so a count per value is a sufficient statistic: the mean and the
    (two-pass, hence numerically stable) variance come out exact from 256 bins, in memory that does
    not grow with the dataset, with no float copy of the pixels (the old float64 copy was 8 bytes
    per pixel, the largest allocation of a preprocess run).
    """

    def __init__(self, channels: int = 3):
        self.counts = np.zeros((channels, 256), dtype=np.int64)  # [C, 256]

    def update(self, images: np.ndarray) -> None:
        """``images``: uint8 [N, H, W, C]; counted a few thousand images at a time, because bincount
        works on an 8-byte integer copy of what it is given."""
        flat = images.reshape(len(images), -1, images.shape[-1])  # [N, H*W, C], a view
        step = max(1, (1 << 20) // max(flat.shape[1], 1))  # about a million pixels per chunk
        for start in range(0, len(flat), step):
            chunk = flat[start:start + step]
            for c in range(self.counts.shape[0]):
                self.counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std on [0, 1] pixels (std floored at 1e-6, rounded to 6 places)."""
        values = np.arange(256, dtype=np.float64) / 255.0  # [256]
        n = np.maximum(self.counts.sum(1), 1)  # [C]
        mean = (self.counts * values).sum(1) / n
        var = (self.counts * (values[None, :] - mean[:, None]) ** 2).sum(1) / n
        return [round(float(v), 6) for v in mean], [round(float(max(np.sqrt(v), 1e-6)), 6) for v in var]


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images [N, H, W, C], on [0, 1] pixels."""
    hist = ChannelHistogram(images.shape[-1])
    hist.update(images)
    return hist.mean_std()


def split_spec(cfg: DataConfig) -> dict:
    """What decides the split: part of the preprocessing spec, hence of the dataset fingerprint."""
    spec = {"method": SPLIT_METHOD, "val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction,
            "seed": cfg.seed, "group_by": cfg.group_by}
    # Only the settings the grouping uses: an unused one must not change the fingerprint.
    if cfg.group_by == "phash":
        spec.update(group_hash=PHASH, group_distance=cfg.group_distance)
    elif cfg.group_by == "regex":
        spec["group_pattern"] = cfg.group_pattern
    return spec


@dataclass
class _Scan:
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


def _scanned(listing: SourceListing, expected_source: str) -> _Scan:
    root = listing.root
    if expected_source and fingerprint_listing(listing) != expected_source:
        raise DataError(f"the data under {root} changed after the run started (its content fingerprint is no "
                        f"longer {expected_source[:12]})",
                        "run the pipeline again; do not change a dataset folder while a run reads it")
    candidates, class_names, stray = scan(listing)
    if len(class_names) < 2:
        raise DataError(f"{root} has {len(class_names)} class folder(s)", "a classifier needs at least 2 classes")
    return _Scan(root, listing_digest(listing), candidates, class_names, stray, len(candidates))


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


def _decode_job(chunk_of: list[Candidate], uri: str, key: str, size: int, resize: str, with_phash: bool,
                scratch: str, max_bytes: int = 0, show: bool = False) -> str:
    """Decode ``chunk_of`` (one part's candidates) into the spool at ``uri``; a top-level function
    so that a process pool can run it. Nothing is left at ``uri`` unless the spool is complete."""
    if spool_is_valid(uri):
        return uri
    cols: dict[str, list] = {k: [] for k in ("rel", "label", "split", "sha256", "reason", "row")}
    hashes: list[str] = []
    writer = SpoolWriter(Path(scratch), size)
    bar = Progress(len(chunk_of), "preprocess: decode", "img") if show else None
    try:
        for start in range(0, len(chunk_of), DECODE_CHUNK):
            decoded = decode_chunk(chunk_of[start:start + DECODE_CHUNK], size, resize, max_bytes)
            for d in decoded:
                cols["rel"].append(d.rel)
                cols["label"].append(d.label_name)
                cols["split"].append(d.split)
                cols["sha256"].append(d.sha256)
                cols["reason"].append(d.reason)
                cols["row"].append(-1 if d.image is None else writer.add(d.image))
            if with_phash:  # from the decoded pixels, now: phase 2 never decodes
                ok = [d.image for d in decoded if d.image is not None]
                hashes.extend(f"{int(h):016x}" for h in phash_batches(np.stack(ok) if ok else
                                                                       np.zeros((0, size, size, 3), np.uint8)))
            if bar is not None:
                bar.advance(len(decoded))
            del decoded
        if with_phash:  # one hash per file: dropped files get none
            it = iter(hashes)
            cols["phash"] = [None if r < 0 else next(it) for r in cols["row"]]
        tmp = writer.finish({"key": key, "files": cols})
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    place(tmp, uri)
    return uri


def _part_job(listing_key: str, work_root: str, cfg: DataConfig, part: int, parts: int,
              candidates: list[Candidate]) -> tuple[tuple, str]:
    """(arguments of ``_decode_job``, the spool's URI) for one part; ``listing_key``: ``listing_digest``."""
    lo, hi = part_bounds(len(candidates), part, parts)
    key = spool_key(listing_key, part, parts, cfg.image_size, cfg.resize, cfg.group_by == "phash",
                    cfg.max_file_bytes)
    uri = spool_uri(work_root, part, parts, key)
    scratch = tempfile.gettempdir() if is_remote(work_root) else str(local_path(uri).parent)
    return (candidates[lo:hi], uri, key, cfg.image_size, cfg.resize, cfg.group_by == "phash", scratch,
            cfg.max_file_bytes), uri


def decode_part(listing_or_data_uri: SourceListing | str, work_root: str, cfg: DataConfig, part: int,
                parts: int) -> str:
    """Phase 1 for ``part`` of ``parts``: decode that slice of the folder's (scan-ordered) files into
    one spool under ``work_root`` (local or ``s3://``); returns its URI. Kept if already there."""
    _check_parts(part, parts)
    listing = (listing_or_data_uri if isinstance(listing_or_data_uri, SourceListing)
               else list_source(listing_or_data_uri))
    scanned = _scanned(listing, "")
    args, _ = _part_job(scanned.key, work_root, cfg, part, parts, scanned.candidates)
    return _decode_job(*args, show=True)


def assemble(data_uri: str, work_root: str, out_root: str, cfg: DataConfig, parts: int,
             expected_source: str = "") -> DatasetManifest:
    """Phase 2: from the ``parts`` spools under ``work_root``, write the dataset under ``out_root``.

    ``expected_source``: the folder's ``source_fingerprint`` taken when the run started, which keys
    KFP's cache of this step; the folder read must still have it, or the cached dataset would be
    filed under the wrong content."""
    return _assemble(_scanned(list_source(data_uri), expected_source), work_root, out_root, cfg, parts)


def preprocess(data_uri: str, out_root: str, cfg: DataConfig, expected_source: str = "") -> DatasetManifest:
    """Ingest ``data_uri`` (an image folder: a local path, ``file://`` or ``s3://bucket/prefix/``) and
    write shards plus manifest under ``out_root``: both phases on this machine, phase 1 on the CPUs
    this process may use (affinity mask, cgroup quota).

    ``expected_source``: see ``assemble``. The manifest is written last: a folder without one is not
    a dataset. The spools go to a temp folder (``TMPDIR``; it needs room for the decoded images),
    removed at the end, also on failure.
    """
    scanned = _scanned(list_source(data_uri), expected_source)  # the listing itself is not kept
    n = scanned.count
    workers = available_cpus()  # the affinity mask capped by a cgroup quota: a pod's CPUs, not the node's
    pool = n >= IN_PROCESS_FILES and workers > 1
    parts = max(parts_for(n, FILES_PER_LOCAL_PART), workers if pool else 1)
    work = tempfile.mkdtemp(prefix="kdflow-preprocess-")
    try:
        jobs = [_part_job(scanned.key, work, cfg, p, parts, scanned.candidates) for p in range(parts)]
        if not pool:
            for args, _ in jobs:
                _decode_job(*args, show=True)
        else:
            # fork when this process has one thread (fast, and a caller's script needs no __main__
            # guard); spawn when it has more (S3 transfer threads, a server): a forked child would
            # inherit locks those threads hold.
            context = get_context("fork" if threading.active_count() == 1 else "spawn")
            with ProcessPoolExecutor(max_workers=min(workers, parts), mp_context=context) as ex:
                # Every worker is started by the submits, before the bar (a tqdm bar starts a thread).
                futures = {ex.submit(_decode_job, *args): len(args[0]) for args, _ in jobs}
                try:
                    with Progress(n, "preprocess: decode", "img") as bar:
                        for done in as_completed(futures):
                            done.result()
                            bar.advance(futures[done])
                except BaseException:
                    ex.shutdown(wait=True, cancel_futures=True)  # a failed part: do not decode the rest
                    raise
        jobs = args = None  # each job, and the in-process loop's last one, held its part's candidates
        return _assemble(scanned, work, out_root, cfg, parts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _return_freed_memory() -> None:
    """Hand the heap freed by the listing back to the OS (glibc keeps freed small blocks otherwise),
    so the shards are written on top of the metadata alone, not of every path the scan held."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by later allocations instead
        pass


def _assemble(scanned: _Scan, work_root: str,
              out_root: str, cfg: DataConfig, parts: int) -> DatasetManifest:
    candidates, root = scanned.candidates, scanned.root
    cache = Path(tempfile.mkdtemp(prefix="kdflow-spools-")) if is_remote(work_root) else None
    try:
        paths, columns = [], []
        key = scanned.key
        for part in range(parts):
            _, uri = _part_job(key, work_root, cfg, part, parts, candidates)
            if not spool_is_valid(uri):
                raise DataError(f"part {part} of {parts} of {root} is not decoded under {work_root} (no {uri})",
                                f"run decode_part for part {part} of {parts} with the same data and "
                                "data settings first")
            paths.append(fetch(uri, cache))
            meta = read_meta(paths[-1])
            lo, hi = part_bounds(len(candidates), part, parts)
            if meta["files"]["rel"] != [c.rel for c in candidates[lo:hi]]:
                raise DataError(f"spool {uri} does not hold part {part} of {parts} of {root}",
                                "delete the work folder and decode again")
            columns.append(part_columns(meta, scanned.class_names, part))
            del meta  # the parsed JSON: hundreds of bytes per file, the columns a few dozen
        files = file_table(columns)
        del columns, candidates
        scanned.release()
        _return_freed_memory()
        return _write_dataset(scanned, files, paths, out_root, cfg)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


def _write_dataset(scanned: _Scan, files: FileTable, paths: list[Path], out_root: str,
                   cfg: DataConfig) -> DatasetManifest:
    root, class_names, stray = scanned.root, scanned.class_names, scanned.stray
    dropped = stray + [{"path": files.rel[i].decode(), "reason": r} for i, r in sorted(files.reasons.items())]
    samples, dup_report = deduplicate(files, class_names)
    if not len(samples):
        raise DataError(f"no readable images in {root}: " + dropped_summary(dropped),
                        "check the files; the reasons above say why each was dropped")
    check_every_class_kept(files, samples, class_names, dup_report, stray, root)
    grouping = group_samples(samples, cfg, None if files.phash is None else files.phash[samples.refs])
    log.info("preprocess: group_by %s: %d groups of %d samples, largest %d", cfg.group_by, grouping.count,
             len(samples), grouping.largest)
    if cfg.group_by != "none" and len(samples) >= 100 and grouping.largest > 0.1 * len(samples):
        log.warning("preprocess: one group holds %d of %d samples (%.0f%%), and a group lands in one split; "
                    "%s", grouping.largest, len(samples), 100.0 * grouping.largest / len(samples),
                    "lower data.group_distance" if cfg.group_by == "phash" else "check data.group_pattern")
    result = assign_splits(samples, class_names, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                           None if cfg.group_by == "none" else grouping.keys)
    if result.moved_to_held_out:
        log.info("preprocess: %d samples follow a near-duplicate in a predefined val/ or test/ folder",
                 result.moved_to_held_out)

    spec = {
        "image_size": cfg.image_size,
        "channels": 3,
        # The resize mode changes every pixel, so it belongs in the spec: the dataset fingerprint,
        # and with it the soft-label cache key, must differ between squash and short_side.
        "resize": cfg.resize,
        "interpolation": "bilinear",
        "split": split_spec(cfg),
    }
    shape = (cfg.image_size, cfg.image_size, 3)
    _return_freed_memory()  # what de-duplication and the split freed, before the shard buffers
    reader = SpoolReader(paths, shape)
    hist = ChannelHistogram()  # train only: val/test statistics must not leak
    split_info: dict[str, dict] = {}
    block = np.zeros((min(READ_BLOCK, cfg.rows_per_shard(), max(len(samples), 1)), *shape), np.uint8)
    bar = Progress(len(samples), "preprocess: write shards", "img")
    try:
        for name, members in result.splits.items():
            writer = ShardWriter(out_root, name, cfg.rows_per_shard(), shape)
            for start in range(0, len(members), len(block)):
                chosen = members[start:start + len(block)]
                refs = samples.refs[chosen]
                out = block[:len(chosen)]
                reader.read_into(files.part[refs], files.row[refs], out)
                if name == "train":
                    hist.update(out)
                writer.add(out, samples.labels[chosen], samples.ids[chosen].astype("<U16"))
                bar.advance(len(chosen))
            split_info[name] = {
                "count": int(len(members)),
                "class_counts": np.bincount(samples.labels[members], minlength=len(class_names)).tolist(),
                "shards": writer.close(),
            }
    finally:
        reader.close()
        bar.close()
    mean, std = hist.mean_std()
    report = {"dropped": dropped, "duplicates": dup_report}
    manifest = {
        "format": FORMAT,
        "kdflow_version": __version__,
        "source": root,
        "spec": spec,
        "class_names": class_names,
        "splits": split_info,
        "stats": {"mean": mean, "std": std},
        "report": {"files_seen": scanned.count + len(stray), "dropped": len(dropped),
                   "duplicates_removed": len(dup_report), "groups": grouping.count,
                   "largest_group": grouping.largest, "moved_to_held_out": result.moved_to_held_out},
        "fingerprint": fingerprint(spec, class_names, split_info),
    }
    storage_for(out_root).write_bytes(join(out_root, "report.json"), json.dumps(report, indent=2).encode())
    write_manifest(out_root, manifest)
    log.info("preprocess: %d samples kept, %d files dropped, %d duplicates removed, fingerprint %s",
             sum(i["count"] for i in split_info.values()), len(dropped), len(dup_report),
             manifest["fingerprint"][:12])
    return DatasetManifest(out_root, manifest)
