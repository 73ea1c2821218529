"""Teacher inference fanned out the Kubeflow way: plan -> dsl.ParallelFor of parts -> commit.

* ``run_teacher_plan`` resolves the cache entry; on a miss it loads the teacher, checks it and its
  test-split floor (before anything is cached) and returns one loop item per part that has shards
  to label. Parts are contiguous ranges of (split, dataset shard) pairs, ``teacher.shards_per_task``
  dataset shards each (SoftLabelCache.label_part).
* ``run_teacher_part`` labels one part's pending view shards (each part task a GPU pod).
* ``run_teacher_commit`` runs after every part: it reads every shard back and commits the entry, or
  fails naming the missing shards; a rerun plans only the parts that still lack shards.

On a hit the plan reads every shard back (``verified_hit``); a damaged entry is reported and planned
as a miss: only the parts holding missing or corrupt shards get work, and the commit writes the
next manifest generation of the views they fixed. Parts and commits of one key may run twice at once
(a retried task, two pipelines): the cache's protocol makes that safe (softlabels/commit.py).

Loop items carry the teacher's URI and digest: inside a loop, kfp.local 2.17 replaces any upstream
task's parameter output a task takes with the loop item (see components/start_sweep.py), so a part
takes nothing from other tasks but its item (and the dataset artifact).

A loop over an empty list is avoided: when no part has work (a cache hit, or every shard already
labelled by an earlier, uncommitted run) the plan returns part 0 alone, which finds nothing to
label and returns without loading the teacher.
"""

from __future__ import annotations

import logging
import math

from kdflow.util.errors import KdflowError
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.steps.teacher import Labeller, TeacherJob, check_floor, prepare, verified_hit

log = logging.getLogger(__name__)


def part_count(job: TeacherJob) -> int:
    """How many part tasks: one per ``teacher.shards_per_task`` dataset shards (all splits)."""
    return max(1, math.ceil(len(job.spec.units()) / job.cfg.teacher.shards_per_task))


def run_teacher_plan(dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str,
                     expected_digest: str = "", tracking_uri: str | None = None) -> list[dict]:
    """The loop items of the part tasks: [{"part", "parts", "teacher_uri", "teacher_digest"}], one per
    part with shards to label (part 0 alone when none has). Checks the teacher and its floor first."""
    job = prepare(dataset_dir, teacher_uri, config_yaml, cache_uri, expected_digest, tracking_uri)
    parts = part_count(job)
    if verified_hit(job):
        log.info("soft-label cache hit %s: every shard verified; the teacher is not run", job.spec.key[:12])
        check_floor(job)
        todo = []
    else:
        check_floor(job, job.load())
        todo = job.cache.parts_with_work(job.spec, parts)
        log.info("soft-label cache miss %s: %d of %d part(s) to label (%d dataset shards, %d per part)",
                 job.spec.key[:12], len(todo), parts, len(job.spec.units()), job.cfg.teacher.shards_per_task)
    return [{"part": p, "parts": parts, "teacher_uri": teacher_uri, "teacher_digest": job.digest}
            for p in (todo or [0])]


def run_teacher_part(dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str, part: int, parts: int,
                     teacher_digest: str = "", tracking_uri: str | None = None) -> dict[str, int]:
    """Label part ``part`` of ``parts``; ``teacher_digest``: the digest the plan saw, checked (the
    labels of one entry must all come from one teacher). Returns the cache's labelling counts."""
    job = prepare(dataset_dir, teacher_uri, config_yaml, cache_uri, "", tracking_uri)
    if teacher_digest and job.digest != teacher_digest:
        raise KdflowError(f"the teacher at {teacher_uri} changed during teacher inference (digest {job.digest[:12]}, "
                          f"the plan saw {teacher_digest[:12]})",
                          "run the pipeline again; do not replace a teacher while a run uses it")
    # No shortcut on a complete entry: the plan may have found it damaged, and this part's range is
    # checked file by file (read back) whatever the entry says; the teacher loads only if needed.
    return job.cache.label_part(job.spec, Labeller(job), part, parts)


def run_teacher_commit(dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str, out_dir: str,
                       expected_digest: str = "", tracking_uri: str | None = None) -> SoftLabelRef:
    """Commit the entry the parts labelled (or find it complete: a hit); write the ref to ``out_dir``."""
    job = prepare(dataset_dir, teacher_uri, config_yaml, cache_uri, expected_digest, tracking_uri)
    complete = job.cache.lookup(job.spec.key) is not None
    # Always a full commit (every shard read back): after a plan that found the entry damaged, the
    # relabelled shards are committed as the views' next manifests; on a sound hit nothing is written.
    _, stats = job.cache.commit(job.spec, teacher_digest=job.digest, teacher_uri=teacher_uri)
    hit = complete and stats["views_computed"] == 0
    log.info("soft-label cache entry %s %s: %d view(s) given a new manifest, %d reused", job.spec.key[:12],
             "verified" if hit else "committed", stats["views_computed"], stats["views_reused"])
    ref = job.ref(hit)
    ref.save(out_dir)
    return ref
