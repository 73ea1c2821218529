"""The soft-label cache in object storage, keyed by content.

Layout under the cache root (a folder, ``file://`` or ``s3://``)::

    softlabels/v4/views/<view key>/<split>-NNNNN.kdsl  values, index, tail (codec.encode: float16/uint),
                                                       params for augmented views (the view's crop box
                                                       and flip, int16 [n, 5]) and two digests
                                                       (labeller.py); one file per dataset shard
    softlabels/v4/views/<view key>/manifest.json       written last: the view's commit; per shard its
                                                       size, sha256 and the digest of its sample ids
    softlabels/v4/entries/<key>.json                   the entry: the list of its views, written
                                                       after every view is complete

At k = 10 and 1000 classes a sample's labels take 44 bytes per view, 54 with an augmented view's
parameters (tests/unit/test_softlabel_fanout.py measures the files). No view holds a copy of the
sample ids: the manifest's per-shard ids digest checks row alignment.

A view key digests what determines that view's soft labels: the teacher's content digest, the
dataset fingerprint, the preprocessing spec, k and the view's spec (identity; or the augmentation
settings, their seed and the view's index). The entry key digests the same with the whole list of
views, so V, the augmentation spec and its seed join k in the key. Views are stored on their own,
so entries share them: a run asking for 16 views reuses the 8 an earlier run computed, and a
cross-entropy run, an online run and an offline one share the plain view.

Writing fans out: ``label_part(spec, infer, part, parts)`` labels the pending views' shards of the
part-th contiguous range of (split, dataset shard) pairs (one pipeline task each), and ``commit``
verifies that every shard of every pending view is there and valid, then writes the view manifests
and the entry, last. ``write`` is every part then the commit, in one process. A view or entry is
complete only when its manifest exists, names the same key and every shard it lists exists with
the recorded size; readers also check each shard's sha256. Anything else is a miss: a rerun keeps
the shard files that are valid for their dataset shard and labels only the others.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kdflow import __version__
from kdflow.data.shards import DatasetManifest
from kdflow.digest import digest_of, sha256_bytes
from kdflow.errors import CacheError
from kdflow.progress import Progress
from kdflow.softlabels import shardfile
from kdflow.softlabels.shardfile import view_file
from kdflow.softlabels.codec import decode
from kdflow.softlabels.labeller import Infer, ShardCheck, ShardWriter, ids_digest, read_valid, runs
from kdflow.softlabels.labels import SoftLabels, SoftRows
from kdflow.softlabels.views import IDENTITY, View
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)

FORMAT = "kdflow.softlabels/4"
LAYOUT = "v4"
MANIFEST = "manifest.json"
CODEC = ("values", "index", "tail_lse", "tail_mean")

__all__ = ["CODEC", "FORMAT", "EntrySpec", "Infer", "SoftLabelCache", "SoftLabels", "SoftRows"]


@dataclass(frozen=True)
class EntrySpec:
    """What a cache entry holds: one teacher's labels of one dataset's views."""

    teacher_digest: str
    dataset: DatasetManifest
    top_k: int
    views: tuple[View, ...] = (IDENTITY,)

    def _base(self) -> dict:
        return {"format": FORMAT, "teacher": self.teacher_digest, "dataset": self.dataset.fingerprint,
                "preprocessing": self.dataset.data["spec"], "top_k": self.top_k}

    @property
    def key(self) -> str:
        return digest_of({**self._base(), "views": [v.spec for v in self.views]})

    def view_key(self, view: View) -> str:
        return digest_of({**self._base(), "view": view.spec})

    def units(self) -> list[tuple[str, int]]:
        """Every (split, dataset shard index), in manifest order: what a fan-out divides."""
        return [(split, i) for split, info in self.dataset.data["splits"].items() for i in range(len(info["shards"]))]

    def part_units(self, part: int, parts: int) -> list[tuple[str, int]]:
        """The part-th of ``parts`` contiguous, near-equal ranges of ``units()``."""
        if not 0 <= part < parts:
            raise CacheError(f"part {part} is not one of {parts} parts", f"use a part index in [0, {parts})")
        units = self.units()
        return units[part * len(units) // parts:(part + 1) * len(units) // parts]


class SoftLabelCache:
    def __init__(self, root: str):
        self.root = root
        self.store = storage_for(root)
        # Entries and view manifests verified by lookup: a step reads several splits of one entry,
        # and verifying costs a read plus a size check per shard (an S3 HEAD each).
        self._verified: dict[str, dict[str, Any]] = {}
        self._verified_views: dict[str, dict[str, Any]] = {}

    def entry_uri(self, key: str) -> str:
        return join(self.root, "softlabels", LAYOUT, "entries", f"{key}.json")

    def view_uri(self, view_key: str) -> str:
        return join(self.root, "softlabels", LAYOUT, "views", view_key)

    def _read_json(self, uri: str, key: str) -> dict[str, Any] | None:
        if not self.store.exists(uri):
            return None
        try:
            data = json.loads(self.store.read_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("soft-label manifest %s is unreadable; treating it as a miss", uri)
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
            log.warning("soft-label manifest %s does not match key %s; treating it as a miss", uri, key[:12])
            return None
        return data

    def view_manifest(self, view_key: str) -> dict[str, Any] | None:
        """The manifest of a complete view, or None (absent, unfinished, or not verifying)."""
        manifest = self._read_json(join(self.view_uri(view_key), MANIFEST), view_key)
        if manifest is None:
            return None
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                if self.store.size(join(self.view_uri(view_key), shard["file"])) != shard["size"]:
                    log.warning("soft-label shard %s of view %s is missing or resized; treating as a miss",
                                shard["file"], view_key[:12])
                    return None
        return manifest

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The manifest of a complete entry (every view complete), or None."""
        entry = self._read_json(self.entry_uri(key), key)
        if entry is None:
            return None
        manifests = {}
        for view in entry["views"]:
            manifests[view["key"]] = self.view_manifest(view["key"])
            if manifests[view["key"]] is None:
                return None
        self._verified_views.update(manifests)
        return entry

    # --- writing ---------------------------------------------------------------------------------

    def _pending(self, spec: EntrySpec) -> list[tuple[str, View]]:
        return [(vkey, view) for vkey, view in ((spec.view_key(v), v) for v in spec.views)
                if self.view_manifest(vkey) is None]

    def _check(self, spec: EntrySpec, split: str, index: int, view: View) -> ShardCheck:
        shard = spec.dataset.data["splits"][split]["shards"][index]
        return ShardCheck(shard["sha256"], int(shard["count"]), not view.is_identity)

    def _todo(self, spec: EntrySpec, pending: list[tuple[str, View]], part: int,
              parts: int) -> tuple[dict[tuple[str, int], list[tuple[str, View]]], int]:
        """({(split, shard index): the pending views lacking a valid file for it}, files kept) of a part."""
        todo: dict[tuple[str, int], list[tuple[str, View]]] = {}
        kept = 0
        for split, index in spec.part_units(part, parts):
            name = view_file(spec.dataset.data["splits"][split]["shards"][index]["file"])
            for vkey, view in pending:
                if not view.covers(split):
                    continue
                if read_valid(self.store, join(self.view_uri(vkey), name), self._check(spec, split, index, view)):
                    kept += 1
                else:
                    todo.setdefault((split, index), []).append((vkey, view))
        return todo, kept

    def parts_with_work(self, spec: EntrySpec, parts: int) -> list[int]:
        """The parts (of ``parts``) that still have a view shard to label: [] on a complete entry."""
        pending = self._pending(spec)
        if not pending:
            return []
        return [part for part in range(parts) if self._todo(spec, pending, part, parts)[0]]

    def label_part(self, spec: EntrySpec, infer: Infer, part: int = 0, parts: int = 1) -> dict[str, int]:
        """Label the pending views' shards of the part-th of ``parts`` ranges of dataset shards.

        A view shard file that is already there and valid for its dataset shard is kept (an earlier
        or concurrent run wrote it); each dataset shard is read once for all the views that lack it.
        Nothing is committed: ``commit`` does that after every part. Returns {"shards_labelled": n,
        "shards_kept": m}.
        """
        dataset, size = spec.dataset, spec.dataset.image_size
        todo, kept = self._todo(spec, self._pending(spec), part, parts)
        if kept:
            log.info("soft labels, part %d/%d: kept %d view shard(s) an earlier run wrote", part + 1, parts, kept)
        rows = sum(dataset.data["splits"][s]["shards"][i]["count"] * len(v) for (s, i), v in todo.items())
        bar = Progress(rows, f"teacher labels (part {part + 1}/{parts})", unit="img")
        writer = ShardWriter(self.store, dataset.num_classes)
        try:
            for split, indices in runs(todo):
                params: dict[str, np.ndarray | None] = {}  # each view's params for the split, made once
                starts = np.cumsum([0] + dataset.shard_counts(split))  # first row of each shard in the split
                # closing(): a failed part stops the read-ahead thread now, not when the traceback goes.
                with closing(dataset.iter_shards(split, order=indices)) as shards:
                    for index, arrays in zip(indices, shards):
                        shard, start = dataset.data["splits"][split]["shards"][index], int(starts[index])
                        ids_sha = ids_digest(arrays.ids)
                        for vkey, view in todo[(split, index)]:
                            if vkey not in params:
                                params[vkey] = view.params(split, dataset.count(split), size, size)
                            p = None if params[vkey] is None else params[vkey][start:start + shard["count"]]
                            out = infer(arrays.images, p)
                            writer.put(join(self.view_uri(vkey), view_file(shard["file"])), out, p, shard["sha256"],
                                       ids_sha)
                            bar.advance(shard["count"])
        except BaseException:
            writer.close(raise_error=False)  # writes what was labelled, also on failure: a rerun keeps it
            raise
        else:
            writer.close()
        finally:
            bar.close()
        return {"shards_labelled": sum(len(v) for v in todo.values()), "shards_kept": kept}

    def commit(self, spec: EntrySpec, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """Verify every shard of every pending view, write the view manifests, then the entry (last).

        Raises CacheError naming the missing or invalid shards when a part has not finished: a
        partial fan-out is never committed. Returns (entry manifest, {"views_computed": n,
        "views_reused": m}).
        """
        keyed = [(spec.view_key(view), view) for view in spec.views]
        pending = self._pending(spec)
        dataset = spec.dataset
        manifests, missing = [], []
        for vkey, view in pending:
            splits: dict[str, dict] = {}
            for split, info in dataset.data["splits"].items():
                if not view.covers(split):
                    continue
                shards = []
                for index, dshard in enumerate(info["shards"]):
                    uri = join(self.view_uri(vkey), view_file(dshard["file"]))
                    found = read_valid(self.store, uri, self._check(spec, split, index, view))
                    if found is None:
                        missing.append(f"{vkey[:12]}/{view_file(dshard['file'])}")
                        continue
                    raw, ids_sha = found
                    shards.append({"file": view_file(dshard["file"]), "count": dshard["count"],
                                   "sha256": sha256_bytes(raw),
                                   "size": len(raw), "ids_sha256": ids_sha})
                splits[split] = {"count": info["count"], "shards": shards}
            manifests.append((vkey, {"format": FORMAT, "key": vkey, "kdflow_version": __version__, "spec": view.spec,
                                     "teacher_digest": spec.teacher_digest, "num_classes": dataset.num_classes,
                                     "top_k": spec.top_k, "splits": splits}))
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CacheError(f"soft-label cache entry {spec.key[:12]} is not complete: {len(missing)} view shard(s) "
                             f"missing or invalid ({shown})",
                             "re-run teacher inference: the failed parts label only the missing shards")
        for vkey, manifest in manifests:
            self.store.write_bytes(join(self.view_uri(vkey), MANIFEST), json.dumps(manifest, indent=2).encode())
        entry = {
            "format": FORMAT,
            "key": spec.key,
            "kdflow_version": __version__,
            "created_unix": int(time.time()),
            "dataset_fingerprint": dataset.fingerprint,
            "num_classes": dataset.num_classes,
            "top_k": spec.top_k,
            "views": [{"key": vkey, "spec": view.spec} for vkey, view in keyed],
            **extra,
        }
        self.store.write_bytes(self.entry_uri(spec.key), json.dumps(entry, indent=2).encode())
        return entry, {"views_computed": len(pending), "views_reused": len(keyed) - len(pending)}

    def write(self, spec: EntrySpec, infer: Infer, extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """Fill every view of ``spec`` that is not complete yet, then commit the entry: one task's
        fan-out (every part, then ``commit``)."""
        self.label_part(spec, infer, 0, 1)
        return self.commit(spec, extra)

    # --- reading ---------------------------------------------------------------------------------

    def _entry(self, key: str) -> dict[str, Any]:
        entry = self._verified.get(key) or self.lookup(key)
        if entry is None:
            raise CacheError(f"soft-label cache entry {self.entry_uri(key)} is not complete",
                             "run the teacher inference step for this dataset and teacher first")
        self._verified[key] = entry
        return entry

    def _views(self, key: str, augmented: bool) -> tuple[dict[str, Any], list[str]]:
        entry = self._entry(key)
        views = [v["key"] for v in entry["views"] if (v["spec"]["kind"] != "identity") == augmented]
        if not views:
            kind = "augmented" if augmented else "plain"
            raise CacheError(f"soft-label cache entry {key[:12]} holds no {kind} views",
                             "re-run teacher inference with this run's config (augment.views)")
        return entry, views

    def _shards(self, vkey: str, split: str) -> list[dict]:
        manifest = self._verified_views[vkey]  # verified by _entry's lookup
        if split not in manifest["splits"]:
            raise CacheError(f"soft-label view {vkey[:12]} has no complete '{split}' split",
                             "re-run teacher inference for this dataset and teacher")
        return manifest["splits"][split]["shards"]

    def _read_shard(self, vkey: str, shard: dict, ids: np.ndarray, split: str, num_classes: int,
                    augmented: bool) -> dict[str, np.ndarray]:
        """One view shard, verified (sha256, row alignment by the ids digest) and decoded."""
        if len(ids) != shard["count"] or ids_digest(ids) != shard["ids_sha256"]:
            raise CacheError(f"soft labels of view {vkey[:12]} are not aligned with the dataset's '{split}' split "
                             f"(shard {shard['file']})", f"delete {self.view_uri(vkey)} and re-run teacher inference")
        raw = self.store.read_bytes(join(self.view_uri(vkey), shard["file"]))
        if sha256_bytes(raw) != shard["sha256"]:
            raise CacheError(f"soft-label shard {shard['file']} of view {vkey[:12]} fails its digest check",
                             f"delete {self.view_uri(vkey)} and re-run teacher inference")
        try:
            arrays = shardfile.unpack(raw)
        except ValueError as exc:  # the digest matched: written by another kdflow's layout of this format
            raise CacheError(f"soft-label shard {shard['file']} of view {vkey[:12]} is not readable: {exc}",
                             f"delete {self.view_uri(vkey)} and re-run teacher inference") from exc
        out = decode(arrays, num_classes)
        if augmented:
            out["params"] = arrays["params"]
        return out

    def load_shard(self, key: str, split: str, shard_index: int, expected_ids: np.ndarray,
                   augmented: bool = False) -> SoftLabels:
        """The labels of one dataset shard's rows (``expected_ids``, that shard's ids, checked by digest).

        ``augmented=False``: the plain view only (V = 1). ``True``: the entry's augmented views,
        stacked on the view axis with their parameters (V = augment.views).
        """
        entry, views = self._views(key, augmented)
        num_classes = int(entry["num_classes"])
        loaded = []
        for vkey in views:
            shards = self._shards(vkey, split)
            if not 0 <= shard_index < len(shards):
                raise CacheError(f"soft-label view {vkey[:12]} has {len(shards)} '{split}' shards, not {shard_index}",
                                 "read the shards of the dataset these labels were made for")
            loaded.append(self._read_shard(vkey, shards[shard_index], expected_ids, split, num_classes, augmented))
        stack = {name: torch.from_numpy(np.stack([a[name] for a in loaded], axis=1))
                 for name in CODEC + (("params",) if augmented else ())}
        return SoftLabels(stack["values"], stack["index"], stack["tail_lse"], stack["tail_mean"], num_classes,
                          stack.get("params"))

    def load_split(self, key: str, split: str, expected_ids: np.ndarray, augmented: bool = False) -> SoftLabels:
        """One split's labels, verifying shard digests and row alignment with the dataset (see
        ``load_shard``). Decoded shard by shard into arrays of the split's size."""
        entry, views = self._views(key, augmented)
        counts = [int(s["count"]) for s in self._shards(views[0], split)]
        if not counts or len(expected_ids) != sum(counts):
            raise CacheError(f"soft labels of the '{split}' split hold {sum(counts)} rows, the dataset "
                             f"{len(expected_ids)}: they are not aligned",
                             "re-run teacher inference for this dataset and teacher")
        out: dict[str, torch.Tensor] = {}
        start = 0
        for index, count in enumerate(counts):
            part = self.load_shard(key, split, index, expected_ids[start:start + count], augmented)
            for name in CODEC + (("params",) if augmented else ()):
                t = getattr(part, name)
                if name not in out:
                    out[name] = torch.empty((len(expected_ids), *t.shape[1:]), dtype=t.dtype)
                out[name][start:start + count] = t
            start += count
        return SoftLabels(out["values"], out["index"], out["tail_lse"], out["tail_mean"], int(entry["num_classes"]),
                          out.get("params"))
