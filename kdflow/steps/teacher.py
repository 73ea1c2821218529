"""Step 2: run the frozen teacher once and cache its soft labels, keyed by content.

One task (``run_teacher_inference``) or fanned out (teacher_fanout.py: a plan, parts over ranges of
dataset shards, a commit); both give the same cache entry, byte for byte.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from kdflow.config import Config
from kdflow.data.shards import DatasetManifest
from kdflow.util.errors import KdflowError
from kdflow.evaluation.teacher_floor import teacher_floor_error
from kdflow.models.loading import TeacherSource
from kdflow.softlabels import views
from kdflow.softlabels.cache import EntrySpec, SoftLabelCache
from kdflow.softlabels.codec import compress
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.steps.preamble import begin_step
from kdflow.training.device import resolve_device
from kdflow.training.predict import predict_images

log = logging.getLogger(__name__)

TEST = "test"


def check_teacher(teacher: torch.nn.Module, dataset: DatasetManifest, device: torch.device) -> None:
    """Fail early, with the fix, when the teacher cannot label this dataset."""
    probe = torch.zeros(1, 3, dataset.image_size, dataset.image_size, device=device)
    try:
        with torch.no_grad():
            out = teacher(probe)
    except RuntimeError as exc:
        raise KdflowError(f"the teacher cannot run on {dataset.image_size}x{dataset.image_size} RGB images: {exc}",
                          "set data.image_size (and teacher.mean/std) to what the teacher was trained on") from exc
    if out.dim() != 2 or out.shape[1] != dataset.num_classes:
        raise KdflowError(
            f"the teacher outputs {tuple(out.shape[1:])} logits but the dataset has {dataset.num_classes} classes",
            "use a teacher trained on these classes (class folders are sorted by name)",
        )


@dataclass(frozen=True)
class TeacherJob:
    """What every teacher inference task resolves first: the config, dataset, teacher and cache entry."""

    cfg: Config
    dataset: DatasetManifest
    source: TeacherSource
    teacher_uri: str
    digest: str  # the teacher's content digest (after adaptation, when adapted)
    spec: EntrySpec
    cache: SoftLabelCache

    def ref(self, hit: bool) -> SoftLabelRef:
        n_views = len(self.spec.views) - 1  # augmented views cached for replay
        return SoftLabelRef(self.cache.root, self.spec.key, hit, self.digest, self.teacher_uri, n_views)

    def load(self) -> tuple[torch.nn.Module, torch.device]:
        """The teacher on the run's device, checked against the dataset."""
        device = resolve_device(self.cfg.train.device)
        teacher = self.source.load(self.dataset.mean, self.dataset.std).to(device)
        check_teacher(teacher, self.dataset, device)
        return teacher, device


def prepare(dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str, expected_digest: str = "",
            tracking_uri: str | None = None) -> TeacherJob:
    """Resolve the job; checks that the teacher is the one the run started with (``expected_digest``)."""
    cfg = begin_step(config_yaml, heavy=True)
    if not teacher_uri:
        raise KdflowError("no teacher given", "pass a teacher (TorchScript, checkpoint or models:/ URI)")
    dataset = DatasetManifest.open(dataset_dir)
    source = TeacherSource.of(teacher_uri, cfg.teacher).reach(tracking_uri)
    digest = source.digest()
    # The given teacher's digest from the start of the run keys KFP's cache of this step; without
    # adaptation the teacher read here is that teacher, and must still be it.
    if expected_digest and cfg.teacher.adapt_epochs == 0 and digest != expected_digest:
        raise KdflowError(f"the teacher at {teacher_uri} changed after the run started (digest {digest[:12]}, "
                          f"expected {expected_digest[:12]})",
                          "run the pipeline again; do not replace a teacher while a run uses it")
    spec = EntrySpec(digest, dataset, cfg.teacher.top_k, tuple(views.plan(cfg.augment, cfg.cached_views())))
    return TeacherJob(cfg, dataset, source, teacher_uri, digest, spec, SoftLabelCache(cache_uri))


def _check_floor(pred: np.ndarray, labels: np.ndarray, dataset: DatasetManifest, cfg: Config) -> None:
    floor = cfg.gate.teacher_floor(dataset.num_classes)
    error = teacher_floor_error(pred, labels, dataset.class_names, floor)
    if error is not None:
        if any(abs(v) > 1 for v in (*(cfg.teacher.mean or ()), *(cfg.teacher.std or ()))):
            raise KdflowError(error.problem, f"teacher.mean/std {list(cfg.teacher.mean)}/{list(cfg.teacher.std)} look "
                              "like 0-255 units, but kdflow feeds the teacher pixels in [0, 1]: divide them by 255. "
                              f"Otherwise: {error.fix}")
        raise error
    log.info("teacher top-1 on the test split: %.4f (floor gate.min_teacher_accuracy=%g)",
             float((pred == labels).mean()), floor)


def check_floor(job: TeacherJob, teacher: tuple[torch.nn.Module, torch.device] | None = None) -> None:
    """The teacher floor on the test split, read shard by shard (never the whole split in memory):
    from the cached labels (``teacher`` None, on a cache hit: the floor may have been raised since
    the entry was written) or by running the teacher (before anything is cached: a mis-loaded
    teacher leaves no entry behind)."""
    if not job.dataset.has_split(TEST) or not job.dataset.count(TEST):
        return
    preds, labels = [], []
    for index, shard in enumerate(job.dataset.iter_shards(TEST)):
        if teacher is None:
            preds.append(job.cache.load_shard(job.spec.key, TEST, index, shard.ids).top1().numpy())
        else:
            model, device = teacher
            logits = _logits(model, device, shard.images, None, job.cfg.teacher.batch_size)
            preds.append(logits.argmax(-1).cpu().numpy())
        labels.append(shard.labels)
    _check_floor(np.concatenate(preds), np.concatenate(labels), job.dataset, job.cfg)


def _logits(model: torch.nn.Module, device: torch.device, images_u8: np.ndarray, params: np.ndarray | None,
            batch_size: int) -> torch.Tensor:
    """float32 [n, C] on ``device``, a few batches at a time: the device holds 8 batches of pixels, not
    the shard; on CUDA each chunk is copied from pinned memory without blocking the host."""
    step, outs = 8 * batch_size, []
    for start in range(0, len(images_u8), step):
        chunk = torch.from_numpy(images_u8[start:start + step])
        if device.type == "cuda":
            chunk = chunk.pin_memory().to(device, non_blocking=True)
        views_ = None if params is None else torch.from_numpy(params[start:start + step])
        # predict_images works in full fp32: these labels are reused by every later run.
        outs.append(predict_images(model, chunk.to(device), batch_size, views_))
    return torch.cat(outs) if outs else torch.zeros(0, device=device)


class Labeller:
    """The cache's ``infer``: teacher logits of a shard (its view params applied), compressed to top-k.
    Loads the teacher on the first call, so a task with nothing to label never loads it."""

    def __init__(self, job: TeacherJob, teacher: tuple[torch.nn.Module, torch.device] | None = None):
        self.job, self._teacher = job, teacher

    def __call__(self, images_u8: np.ndarray, params: np.ndarray | None) -> dict[str, np.ndarray]:
        if self._teacher is None:
            self._teacher = self.job.load()
        model, device = self._teacher
        logits = _logits(model, device, images_u8, params, self.job.cfg.teacher.batch_size)
        return compress(logits.reshape(len(images_u8), self.job.dataset.num_classes), self.job.cfg.teacher.top_k)


def verified_hit(job: TeacherJob) -> bool:
    """True when the entry is complete and every shard of it reads back sound (``SoftLabelCache.verify``).

    A hit is read in full here, once (labels are about 54 bytes a sample a view), because a later
    step would otherwise find a corrupt or vanished shard only when it reads it, and fail. A damaged
    entry is reported and treated as a miss: the labelling that follows keeps every valid file and
    relabels only the missing or corrupt shards, then commits the views' next manifests."""
    if not job.cache.committed(job.spec.key):
        return False  # never labelled: a plain miss, nothing to report
    problems = job.cache.verify(job.spec)
    if problems:
        log.warning("soft-label cache entry %s is damaged (%d problem(s): %s); relabelling what is missing or "
                    "corrupt", job.spec.key[:12], len(problems),
                    "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
    return not problems


def run_teacher_inference(
    dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str, out_dir: str, expected_digest: str = "",
    tracking_uri: str | None = None,
) -> SoftLabelRef:
    """Fill (or find) the cache entry in this one task; write a ``SoftLabelRef`` to ``out_dir`` and return it.

    The entry holds the plain view of every split and, when the run distils offline with
    augmentation, ``augment.views`` augmented views of the train split (see softlabels/views.py).
    """
    job = prepare(dataset_dir, teacher_uri, config_yaml, cache_uri, expected_digest, tracking_uri)
    if verified_hit(job):
        log.info("soft-label cache hit %s: every shard verified; the teacher is not run", job.spec.key[:12])
        check_floor(job)
        ref = job.ref(True)
    else:
        teacher = job.load()
        check_floor(job, teacher)
        _, stats = job.cache.write(job.spec, Labeller(job, teacher), teacher_digest=job.digest,
                                   teacher_uri=teacher_uri)
        log.info("soft-label cache miss %s: %d view(s) committed, %d reused from earlier entries",
                 job.spec.key[:12], stats["views_computed"], stats["views_reused"])
        ref = job.ref(False)
    ref.save(out_dir)
    return ref
