"""The soft-label cache in object storage, keyed by content.

Layout under the cache root (a folder, ``file://`` or ``s3://``)::

    softlabels/v5/views/<view key>/<split>-NNNNN.<sha256[:32]>.kdsl
                                        values, index, tail (codec.encode: float16/uint), params
                                        for augmented views (the view's crop box and flip, int16
                                        [n, 5]) and two digests (labeller.py); one file per dataset
                                        shard, named by the digest of its bytes
    softlabels/v5/views/<view key>/manifests/<gen:08d>.json
                                        the view's commits: per shard its file, size, sha256 and the
                                        digest of its sample ids; the highest that verifies counts
    softlabels/v5/entries/<key>.json    the entry: the list of its views, created (conditionally)
                                        after every view is committed; no time stamp, so racing
                                        commits of one entry write equal bytes

At k = 10 and 1000 classes a sample's labels take 44 bytes per view, 54 with an augmented view's
parameters (tests/unit/test_softlabel_fanout.py measures the files). No view holds a copy of the
sample ids: the manifest's per-shard ids digest checks row alignment.

A view key digests what determines that view's soft labels: the teacher's content digest, the
dataset fingerprint, the preprocessing spec, k and the view's spec (identity; or the augmentation
settings, their seed and the view's index). The entry key digests the same with the whole list of
views, so V, the augmentation spec and its seed join k in the key. Views are stored on their own,
so entries share them: a run asking for 16 views reuses the 8 an earlier run computed, and a
cross-entropy run, an online run and an offline one share the plain view.

Writing fans out: ``label_part(spec, infer, part, parts)`` labels the view shards of the part-th
contiguous range of (split, dataset shard) pairs that have no valid file yet (one pipeline task
each), and ``commit`` reads back every shard of every view, then commits each view's manifest and
the entry, last. ``write`` is every part then the commit, in one process. Runs that need one key at
once (two pipelines, a retried task beside its first try) share the work safely without locks:
shard files are content-addressed, so writers never put different bytes at one name, and a
manifest generation is created at most once by a conditional write (commit.py says why this is
safe on S3 and on a file system). A killed task leaves whole files (storage writes are atomic) or
none; its rerun keeps every file whose bytes match its name and its dataset shard, and labels the
rest.

``lookup`` (cheap: one listing per view and the manifests) answers "complete": the newest
manifest that names, for every shard, a file that exists with the recorded size and whose name's
digest is the recorded sha256. Readers (``load_shard``) check each shard's sha256 and row alignment
on every read and refuse a corrupt one with a CacheError. ``verify`` reads every shard back; the
teacher step runs it on a hit, and anything missing or corrupt is reported and relabelled (that
shard alone): the same bytes go back under the same name, other bytes (labels need not be
bit-identical on a GPU) under a new one, which the view's next manifest generation names.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from dataclasses import dataclass

import numpy as np

from kdflow.data.shards import DatasetManifest
from kdflow.storage.digest import digest_of
from kdflow.util.errors import CacheError
from kdflow.util.progress import Progress
from kdflow.softlabels.commit import ViewState, children, commit_next, latest, read_manifest
from kdflow.softlabels.labeller import Infer, ShardCheck, ViewShardWriter, ids_digest, read_valid, runs
from kdflow.softlabels.labels import SoftLabels, SoftRows
from kdflow.softlabels.manifest import (FORMAT, CacheEntry, ViewManifest, ViewRef, ViewShard, ViewSplit, as_stored,
                                        complete_view)
from kdflow.softlabels.reading import CODEC, CacheReading
from kdflow.softlabels.shardfile import parse_view_file, shard_stem
from kdflow.softlabels.views import IDENTITY, View
from kdflow.storage import join, storage_for

log = logging.getLogger(__name__)

LAYOUT = "v5"
MANIFESTS = "manifests"

__all__ = ["CODEC", "FORMAT", "CacheEntry", "EntrySpec", "Infer", "SoftLabelCache", "SoftLabels", "SoftRows",
           "ViewManifest"]


@dataclass(frozen=True)
class EntrySpec:
    """What a cache entry holds: one teacher's labels of one dataset's views."""

    teacher_digest: str
    dataset: DatasetManifest
    top_k: int
    views: tuple[View, ...] = (IDENTITY,)

    def _base(self) -> dict:
        return {"format": FORMAT, "teacher": self.teacher_digest, "dataset": self.dataset.fingerprint,
                "preprocessing": self.dataset.spec.to_dict(), "top_k": self.top_k}

    @property
    def key(self) -> str:
        return digest_of({**self._base(), "views": [v.spec for v in self.views]})

    def view_key(self, view: View) -> str:
        return digest_of({**self._base(), "view": view.spec})

    def units(self) -> list[tuple[str, int]]:
        """Every (split, dataset shard index), in manifest order: what a fan-out divides."""
        return self.dataset.units()

    def part_units(self, part: int, parts: int) -> list[tuple[str, int]]:
        """The part-th of ``parts`` contiguous, near-equal ranges of ``units()``."""
        if not 0 <= part < parts:
            raise CacheError(f"part {part} is not one of {parts} parts", f"use a part index in [0, {parts})")
        units = self.units()
        return units[part * len(units) // parts:(part + 1) * len(units) // parts]


class SoftLabelCache(CacheReading):
    def __init__(self, root: str):
        self.root = root
        self.store = storage_for(root)
        # Entries and view manifests verified by lookup: a step reads several splits of one entry,
        # and verifying costs a listing per view.
        self._verified: dict[str, CacheEntry] = {}
        self._verified_views: dict[str, ViewManifest] = {}

    def entry_uri(self, key: str) -> str:
        return join(self.root, "softlabels", LAYOUT, "entries", f"{key}.json")

    def view_uri(self, view_key: str) -> str:
        return join(self.root, "softlabels", LAYOUT, "views", view_key)

    def manifests_uri(self, view_key: str) -> str:
        return join(self.view_uri(view_key), MANIFESTS)

    # --- manifests -------------------------------------------------------------------------------

    def _files(self, view_key: str, listing: list | None = None) -> dict[str, int]:
        """{name: size} of the view shard files in a view's folder (one listing)."""
        listing = self.store.list_info(self.view_uri(view_key)) if listing is None else listing
        return {name: info.size for name, info in children(listing, self.view_uri(view_key)).items()
                if parse_view_file(name) is not None}

    def _view_state(self, view_key: str) -> ViewState:
        listing = self.store.list_info(self.view_uri(view_key))
        files = self._files(view_key, listing)
        rejected: list[str] = []

        def complete(raw: dict) -> ViewManifest | None:
            manifest, problem = complete_view(raw, files)
            if problem is not None:
                log.warning("soft-label view %s: a manifest does not verify (%s); not used", view_key[:12], problem)
                rejected.append(problem)
            return manifest

        top, manifest = latest(self.store, listing, self.manifests_uri(view_key), FORMAT, view_key, complete)
        return ViewState(files, top, manifest, rejected)

    def view_manifest(self, view_key: str) -> ViewManifest | None:
        """The newest manifest of a view that is complete (every file it names present, with its
        recorded size and digest in its name), or None."""
        return self._view_state(view_key).manifest

    def lookup(self, key: str) -> CacheEntry | None:
        """The entry when it is complete (every view's manifest complete), or None. Cheap: it lists
        and reads manifests, not shards (``verify`` reads them; readers check each shard they read)."""
        entry = self._read_entry(key)
        if entry is None:
            return None
        manifests = {}
        for view in entry.views:
            manifests[view.key] = self.view_manifest(view.key)
            if manifests[view.key] is None:
                return None
        self._verified_views.update(manifests)
        return entry

    def _read_entry(self, key: str) -> CacheEntry | None:
        if not self.store.exists(self.entry_uri(key)):
            return None
        raw = read_manifest(self.store, self.entry_uri(key), FORMAT, key)
        return CacheEntry.parse(raw) if raw is not None else None

    def committed(self, key: str) -> bool:
        """Whether an entry of ``key`` was ever committed (complete now or not)."""
        return self.store.exists(self.entry_uri(key))

    def verify(self, spec: EntrySpec) -> list[str]:
        """Read every shard of every view of ``spec`` back: [] when the entry is complete and sound,
        else one line per problem (no complete entry, a view without a complete manifest, a shard
        missing, corrupt or not of its dataset shard)."""
        problems = [] if self.lookup(spec.key) is not None else [f"entry {spec.key[:12]}: not complete"]
        for vkey, view in ((spec.view_key(v), v) for v in spec.views):
            state = self._view_state(vkey)
            if state.manifest is None:
                problems.append(f"view {vkey[:12]}: " + (state.rejected[0] if state.rejected else "no manifest"))
                continue
            for split, index in spec.units():
                if not view.covers(split):
                    continue
                shard = state.manifest.shard(split, index)
                if shard is None:
                    problems.append(f"view {vkey[:12]}: no shard {index} of '{split}'")
                    continue
                found = read_valid(self.store, self.view_uri(vkey), shard.file, self._check(spec, split, index, view))
                if found != shard:
                    problems.append(f"view {vkey[:12]}: shard {shard.file} is corrupt or not of its dataset shard")
        return problems

    # --- writing ---------------------------------------------------------------------------------

    def _check(self, spec: EntrySpec, split: str, index: int, view: View) -> ShardCheck:
        shard = spec.dataset.shards(split)[index]
        return ShardCheck(shard.sha256, shard.count, not view.is_identity)

    def _valid(self, spec: EntrySpec, vkey: str, view: View, state: ViewState, split: str,
               index: int) -> ViewShard | None:
        """A valid file of one view shard: the one the current manifest names first, then any other
        (another run's, or this shard relabelled); None when there is none."""
        stem = shard_stem(spec.dataset.shards(split)[index].file)
        names = state.by_stem.get(stem, [])
        named = state.named(split, index)
        check = self._check(spec, split, index, view)
        for name in sorted(names, key=lambda n: n != named):
            found = read_valid(self.store, self.view_uri(vkey), name, check)
            if found is not None:
                return found
            log.warning("soft-label view %s: shard file %s is corrupt or not of its dataset shard; not used",
                        vkey[:12], name)
        return None

    def _todo(self, spec: EntrySpec, units: list[tuple[str, int]]
              ) -> tuple[dict[tuple[str, int], list[tuple[str, View]]], int]:
        """({(split, shard index): the views lacking a valid file for it}, files kept) of some units."""
        states = {spec.view_key(v): self._view_state(spec.view_key(v)) for v in spec.views}
        todo: dict[tuple[str, int], list[tuple[str, View]]] = {}
        kept = 0
        for split, index in units:
            for vkey, view in ((spec.view_key(v), v) for v in spec.views):
                if not view.covers(split):
                    continue
                if self._valid(spec, vkey, view, states[vkey], split, index) is not None:
                    kept += 1
                else:
                    todo.setdefault((split, index), []).append((vkey, view))
        return todo, kept

    def parts_with_work(self, spec: EntrySpec, parts: int) -> list[int]:
        """The parts (of ``parts``) that still have a view shard to label: [] when every view shard
        has a valid file (reads each one back)."""
        todo, _ = self._todo(spec, spec.units())
        return [part for part in range(parts) if any(u in todo for u in spec.part_units(part, parts))]

    def label_part(self, spec: EntrySpec, infer: Infer, part: int = 0, parts: int = 1) -> dict[str, int]:
        """Label the view shards of the part-th of ``parts`` ranges of dataset shards that lack a valid file.

        A view shard file that is already there and valid (its bytes match its name's digest and its
        dataset shard) is kept: an earlier, killed or concurrent run wrote it; each dataset shard is
        read once for all the views that lack it. Nothing is committed: ``commit`` does that after
        every part. Returns {"shards_labelled": n, "shards_kept": m}.
        """
        dataset, size = spec.dataset, spec.dataset.image_size
        todo, kept = self._todo(spec, spec.part_units(part, parts))
        rows = sum(dataset.shards(s)[i].count * len(v) for (s, i), v in todo.items())
        bar = Progress(rows, f"teacher labels (part {part + 1}/{parts})", unit="img")
        writer = ViewShardWriter(self.store, dataset.num_classes)
        try:
            for split, indices in runs(todo):
                params: dict[str, np.ndarray | None] = {}  # each view's params for the split, made once
                starts = np.cumsum([0] + dataset.shard_counts(split))  # first row of each shard in the split
                # closing(): a failed part stops the read-ahead thread now, not when the traceback goes.
                with closing(dataset.iter_shards(split, order=indices)) as shards:
                    for index, arrays in zip(indices, shards):
                        shard, start = dataset.shards(split)[index], int(starts[index])
                        ids_sha = ids_digest(arrays.ids)
                        for vkey, view in todo[(split, index)]:
                            if vkey not in params:
                                params[vkey] = view.params(split, dataset.count(split), size, size)
                            p = None if params[vkey] is None else params[vkey][start:start + shard.count]
                            out = infer(arrays.images, p)
                            writer.put(self.view_uri(vkey), shard_stem(shard.file), out, p, shard.sha256, ids_sha)
                            bar.advance(shard.count)
        except BaseException:
            writer.close(raise_error=False)  # writes what was labelled, also on failure: a rerun keeps it
            raise
        else:
            writer.close()
        finally:
            bar.close()
        stats = {"shards_labelled": sum(len(v) for v in todo.values()), "shards_kept": kept}
        log.info("soft labels, part %d/%d: %d view shard(s) labelled, %d kept (valid files an earlier or "
                 "concurrent run wrote)", part + 1, parts, stats["shards_labelled"], kept)
        return stats

    def commit(self, spec: EntrySpec, teacher_digest: str | None = None,
               teacher_uri: str | None = None) -> tuple[CacheEntry, dict[str, int]]:
        """Read back every shard of every view, commit each view's manifest, then the entry (last).

        A view whose newest manifest already names exactly the valid files is reused as it is;
        otherwise its next manifest generation is committed (or a concurrent run's is used, see
        commit.py). Raises CacheError naming the missing or invalid shards when a part has not
        finished: a partial fan-out is never committed, and nothing is written. ``teacher_digest``
        and ``teacher_uri`` are recorded in the entry when given. Returns (entry, {"views_computed":
        views given a new manifest, "views_reused": the others}).
        """
        keyed = [(spec.view_key(view), view) for view in spec.views]
        states, manifests, missing = {}, {}, []
        for vkey, view in keyed:
            states[vkey] = self._view_state(vkey)
            manifests[vkey] = self._verified_manifest(spec, vkey, view, states[vkey], missing)
        if missing:
            shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
            raise CacheError(f"soft-label cache entry {spec.key[:12]} is not complete: {len(missing)} view shard(s) "
                             f"missing or invalid ({shown})",
                             "re-run teacher inference: the failed parts label only the missing shards")
        computed = 0
        for vkey, manifest in manifests.items():
            if states[vkey].manifest is not None and states[vkey].manifest.splits == manifest.splits:
                continue  # its newest manifest names exactly these verified files
            commit_next(self.store, self.manifests_uri(vkey), states[vkey].top, manifest.to_dict(),
                        lambda m, k=vkey: complete_view(m, self._files(k))[0] is not None,
                        f"soft-label view {vkey[:12]}")
            computed += 1
        entry = CacheEntry(key=spec.key, dataset_fingerprint=spec.dataset.fingerprint,
                           num_classes=spec.dataset.num_classes, top_k=spec.top_k,
                           views=tuple(ViewRef(vkey, as_stored(view.spec)) for vkey, view in keyed),
                           teacher_digest=teacher_digest, teacher_uri=teacher_uri)
        return self._commit_entry(entry), {"views_computed": computed, "views_reused": len(keyed) - computed}

    def _verified_manifest(self, spec: EntrySpec, vkey: str, view: View, state: ViewState,
                           missing: list[str]) -> ViewManifest:
        """The manifest of the valid files of one view, every shard read back; the shards that have no
        valid file are added to ``missing`` (and left out)."""
        splits: dict[str, ViewSplit] = {}
        for split, info in spec.dataset.splits.items():
            if not view.covers(split):
                continue
            shards = []
            for index, dshard in enumerate(info.shards):
                found = self._valid(spec, vkey, view, state, split, index)
                if found is None:
                    missing.append(f"{vkey[:12]}/{shard_stem(dshard.file)}")
                else:
                    shards.append(found)
            splits[split] = ViewSplit(info.count, tuple(shards))
        return ViewManifest(key=vkey, spec=as_stored(view.spec), teacher_digest=spec.teacher_digest,
                            num_classes=spec.dataset.num_classes, top_k=spec.top_k, splits=splits)

    def _commit_entry(self, entry: CacheEntry) -> CacheEntry:
        """The entry committed for ``entry.key``: the one already there (or a concurrent run's, first
        created by a conditional write), else ``entry``. Every sound entry of a key names the same
        views (the key digests them), so which one wins does not matter, and one that does not
        read (damaged) is replaced without misleading any reader."""
        uri = self.entry_uri(entry.key)

        def sound(e: CacheEntry | None) -> bool:
            return e is not None and e.views == entry.views

        current = self._read_entry(entry.key)
        if sound(current):
            return current
        data = json.dumps(entry.to_dict(), indent=2).encode()
        if self.store.write_if_absent(uri, data):
            return entry
        current = self._read_entry(entry.key)
        if sound(current):
            return current
        log.warning("soft-label entry %s does not read or names other views; replacing it", uri)
        self.store.write_bytes(uri, data)
        return entry

    def write(self, spec: EntrySpec, infer: Infer, teacher_digest: str | None = None,
              teacher_uri: str | None = None) -> tuple[CacheEntry, dict[str, int]]:
        """Label every view shard that has no valid file yet, then commit the entry: one task's
        fan-out (every part, then ``commit``)."""
        self.label_part(spec, infer, 0, 1)
        return self.commit(spec, teacher_digest, teacher_uri)
