"""The preprocess step: image folder in, verified shards and a manifest out."""

from __future__ import annotations

import json
import logging

import numpy as np

from kdflow import __version__
from kdflow.config import DataConfig
from kdflow.data.groups import PHASH, group_samples
from kdflow.data.imagefolder import decode_all, scan
from kdflow.data.shards import (
    FORMAT,
    DatasetManifest,
    SplitArrays,
    fingerprint,
    write_manifest,
    write_split_shards,
)
from kdflow.data.source import fingerprint_listing, list_source
from kdflow.data.split import SPLIT_METHOD, Sample, assign_splits, deduplicate
from kdflow.errors import DataError
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)


def _arrays(samples: list[Sample], size: int) -> SplitArrays:
    if not samples:
        return SplitArrays(np.zeros((0, size, size, 3), np.uint8), np.zeros(0, np.int64), np.zeros(0, "<U16"))
    return SplitArrays(
        images=np.stack([s.image for s in samples]),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        ids=np.array([s.id for s in samples], dtype="<U16"),
    )


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


def preprocess(data_uri: str, out_root: str, cfg: DataConfig, expected_source: str = "") -> DatasetManifest:
    """Ingest ``data_uri`` (an image folder: a local path, ``file://`` or ``s3://bucket/prefix/``) and
    write shards plus manifest under ``out_root``.

    ``expected_source``: the folder's ``source_fingerprint`` taken when the run started, which keys
    KFP's cache of this step; the folder read must still have it, or the cached dataset would be
    filed under the wrong content. The manifest is written last: a folder without one is not a dataset.
    """
    listing = list_source(data_uri)
    root = listing.root
    if expected_source and fingerprint_listing(listing) != expected_source:
        raise DataError(f"the data under {root} changed after the run started (its content fingerprint is no "
                        f"longer {expected_source[:12]})",
                        "run the pipeline again; do not change a dataset folder while a run reads it")
    candidates, class_names, stray = scan(listing)
    if len(class_names) < 2:
        raise DataError(f"{root} has {len(class_names)} class folder(s)", "a classifier needs at least 2 classes")
    decoded = decode_all(candidates, cfg.image_size, resize=cfg.resize)
    dropped = stray + [{"path": d.rel, "reason": d.reason} for d in decoded if d.image is None]
    samples, dup_report = deduplicate([d for d in decoded if d.image is not None], class_names)
    if not samples:
        raise DataError(f"no readable images in {root}", "check the files; the report lists why each was dropped")
    grouping = group_samples(samples, cfg)
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
    splits = result.splits

    spec = {
        "image_size": cfg.image_size,
        "channels": 3,
        # The resize mode changes every pixel, so it belongs in the spec: the dataset fingerprint,
        # and with it the soft-label cache key, must differ between squash and short_side.
        "resize": cfg.resize,
        "interpolation": "bilinear",
        "split": split_spec(cfg),
    }
    split_info: dict[str, dict] = {}
    mean = std = None
    for name, members in splits.items():
        arrays = _arrays(members, cfg.image_size)
        if name == "train":
            mean, std = channel_stats(arrays.images)  # train only: val/test statistics must not leak
        split_info[name] = {
            "count": len(arrays),
            "class_counts": np.bincount(arrays.labels, minlength=len(class_names)).tolist(),
            "shards": write_split_shards(out_root, name, arrays, cfg.shard_size),
        }
    report = {"dropped": dropped, "duplicates": dup_report}
    manifest = {
        "format": FORMAT,
        "kdflow_version": __version__,
        "source": root,
        "spec": spec,
        "class_names": class_names,
        "splits": split_info,
        "stats": {"mean": mean, "std": std},
        "report": {"files_seen": len(candidates) + len(stray), "dropped": len(dropped),
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
