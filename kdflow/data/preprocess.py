"""The preprocess step: image folder in, verified shards and a manifest out, in bounded memory.

Two phases, so that neither holds the dataset and the first can fan out:

1. ``decode_part`` (kdflow.data.decode): part k of n (a contiguous slice of the scanned file list) is
   read, hashed and decoded, a chunk at a time, into one spool file (``kdflow.data.spool``): the
   images on disk, a few dozen bytes of metadata per file.
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
import shutil
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from kdflow.config import DataConfig
from kdflow.util.cpus import available_cpus
from kdflow.data.decode import Scan, decode_part, part_job, parts_for, plan_parts, scanned
from kdflow.data.groups import PHASH, Grouping, group_samples
from kdflow.data.manifest import ChannelStats, PreprocessReport, PreprocessSpec, SplitInfo
from kdflow.data.shards import DatasetManifest, ImageShardWriter
from kdflow.data.source import is_remote, list_source
from kdflow.data.split import (SPLIT_METHOD, FileTable, SampleTable, SplitResult, assign_splits,
                               check_every_class_kept, deduplicate, dropped_summary)
from kdflow.data.spool import SpoolReader, fetch, file_table, part_bounds, part_columns, read_meta, spool_is_valid
from kdflow.data.stats import ChannelHistogram
from kdflow.util.errors import DataError
from kdflow.util.progress import Progress
from kdflow.storage import join, storage_for

__all__ = ["assemble", "decode_part", "plan_parts", "preprocess", "split_spec"]

log = logging.getLogger(__name__)

READ_BLOCK = 1024  # images read back from the spools per step while a shard fills
FILES_PER_LOCAL_PART = 2048  # preprocess on one machine: at most this many files per part ...
IN_PROCESS_FILES = 2000  # ... and no process pool below this many files


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


def preprocess_spec(cfg: DataConfig) -> PreprocessSpec:
    # The resize mode changes every pixel, so it belongs in the spec: the dataset fingerprint, and
    # with it the soft-label cache key, must differ between squash and short_side.
    return PreprocessSpec(image_size=cfg.image_size, channels=3, resize=cfg.resize, interpolation="bilinear",
                          split=split_spec(cfg))


def assemble(data_uri: str, work_root: str, out_root: str, cfg: DataConfig, parts: int,
             expected_source: str = "") -> DatasetManifest:
    """Phase 2: from the ``parts`` spools under ``work_root``, write the dataset under ``out_root``.

    ``expected_source``: the folder's ``source_fingerprint`` taken when the run started, which keys
    KFP's cache of this step; the folder read must still have it, or the cached dataset would be
    filed under the wrong content."""
    return _assemble(scanned(list_source(data_uri), expected_source), work_root, out_root, cfg, parts)


def preprocess(data_uri: str, out_root: str, cfg: DataConfig, expected_source: str = "") -> DatasetManifest:
    """Ingest ``data_uri`` (an image folder: a local path, ``file://`` or ``s3://bucket/prefix/``) and
    write shards plus manifest under ``out_root``: both phases on this machine, phase 1 on the CPUs
    this process may use (affinity mask, cgroup quota).

    ``expected_source``: see ``assemble``. The manifest is written last: a folder without one is not
    a dataset. The spools go to a temp folder (``TMPDIR``; it needs room for the decoded images),
    removed at the end, also on failure.
    """
    folder = scanned(list_source(data_uri), expected_source)  # the listing itself is not kept
    n = folder.count
    workers = available_cpus()  # the affinity mask capped by a cgroup quota: a pod's CPUs, not the node's
    pool = n >= IN_PROCESS_FILES and workers > 1
    parts = max(parts_for(n, FILES_PER_LOCAL_PART), workers if pool else 1)
    work = tempfile.mkdtemp(prefix="kdflow-preprocess-")
    try:
        jobs = [part_job(folder.key, work, cfg, p, parts, folder.candidates) for p in range(parts)]
        if not pool:
            for job in jobs:
                job.run(show=True)
        else:
            _decode_in_pool(jobs, min(workers, parts), n)
        jobs = job = None  # each job, and the in-process loop's last one, held its part's candidates
        return _assemble(folder, work, out_root, cfg, parts)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _decode_in_pool(jobs: list, workers: int, files: int) -> None:
    # fork when this process has one thread (fast, and a caller's script needs no __main__ guard);
    # spawn when it has more (S3 transfer threads, a server): a forked child would inherit locks
    # those threads hold.
    context = get_context("fork" if threading.active_count() == 1 else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as ex:
        # Every worker is started by the submits, before the bar (a tqdm bar starts a thread).
        futures = {ex.submit(job.run): len(job.candidates) for job in jobs}
        try:
            with Progress(files, "preprocess: decode", "img") as bar:
                for done in as_completed(futures):
                    done.result()
                    bar.advance(futures[done])
        except BaseException:
            ex.shutdown(wait=True, cancel_futures=True)  # a failed part: do not decode the rest
            raise


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


def _assemble(folder: Scan, work_root: str, out_root: str, cfg: DataConfig, parts: int) -> DatasetManifest:
    candidates, root = folder.candidates, folder.root
    cache = Path(tempfile.mkdtemp(prefix="kdflow-spools-")) if is_remote(work_root) else None
    try:
        paths, columns = [], []
        for part in range(parts):
            uri = part_job(folder.key, work_root, cfg, part, parts, candidates).uri
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
            columns.append(part_columns(meta, folder.class_names, part))
            del meta  # the parsed JSON: hundreds of bytes per file, the columns a few dozen
        files = file_table(columns)
        del columns, candidates
        folder.release()
        _return_freed_memory()
        return _write_dataset(folder, files, paths, out_root, cfg)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)


@dataclass(frozen=True)
class _Plan:
    """What the metadata decided, before any pixel is read back: the samples kept and their splits."""

    samples: SampleTable  # the files kept (deduplicate)
    dropped: list[dict]  # {"path", "reason"} of every file not kept
    duplicates: list[dict]  # deduplicate's report
    grouping: Grouping
    splits: SplitResult


def _plan(folder: Scan, files: FileTable, cfg: DataConfig) -> _Plan:
    root, class_names, stray = folder.root, folder.class_names, folder.stray
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
    return _Plan(samples, dropped, dup_report, grouping, result)


def _write_shards(plan: _Plan, files: FileTable, paths: list[Path], out_root: str, cfg: DataConfig,
                  num_classes: int) -> tuple[dict[str, SplitInfo], ChannelStats]:
    """Each split's shards, filled from the spools a block at a time; the train split's statistics."""
    samples = plan.samples
    shape = (cfg.image_size, cfg.image_size, 3)
    _return_freed_memory()  # what de-duplication and the split freed, before the shard buffers
    reader = SpoolReader(paths, shape)
    hist = ChannelHistogram()  # train only: val/test statistics must not leak
    split_info: dict[str, SplitInfo] = {}
    block = np.zeros((min(READ_BLOCK, cfg.rows_per_shard(), max(len(samples), 1)), *shape), np.uint8)
    bar = Progress(len(samples), "preprocess: write shards", "img")
    try:
        for name, members in plan.splits.splits.items():
            writer = ImageShardWriter(out_root, name, cfg.rows_per_shard(), shape)
            for start in range(0, len(members), len(block)):
                chosen = members[start:start + len(block)]
                refs = samples.refs[chosen]
                out = block[:len(chosen)]
                reader.read_into(files.part[refs], files.row[refs], out)
                if name == "train":
                    hist.update(out)
                writer.add(out, samples.labels[chosen], samples.ids[chosen].astype("<U16"))
                bar.advance(len(chosen))
            counts = np.bincount(samples.labels[members], minlength=num_classes).tolist()
            split_info[name] = SplitInfo(int(len(members)), tuple(counts), tuple(writer.close()))
    finally:
        reader.close()
        bar.close()
    mean, std = hist.mean_std()
    return split_info, ChannelStats(tuple(mean), tuple(std))


def _write_dataset(folder: Scan, files: FileTable, paths: list[Path], out_root: str,
                   cfg: DataConfig) -> DatasetManifest:
    plan = _plan(folder, files, cfg)
    split_info, stats = _write_shards(plan, files, paths, out_root, cfg, len(folder.class_names))
    report = PreprocessReport(files_seen=folder.count + len(folder.stray), dropped=len(plan.dropped),
                              duplicates_removed=len(plan.duplicates), groups=plan.grouping.count,
                              largest_group=plan.grouping.largest, moved_to_held_out=plan.splits.moved_to_held_out)
    manifest = DatasetManifest.build(out_root, folder.root, preprocess_spec(cfg), folder.class_names, split_info,
                                     stats, report)
    why = {"dropped": plan.dropped, "duplicates": plan.duplicates}
    storage_for(out_root).write_bytes(join(out_root, "report.json"), json.dumps(why, indent=2).encode())
    manifest.write()
    log.info("preprocess: %d samples kept, %d files dropped, %d duplicates removed, fingerprint %s",
             sum(i.count for i in split_info.values()), len(plan.dropped), len(plan.duplicates),
             manifest.fingerprint[:12])
    return manifest
