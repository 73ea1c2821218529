"""Step 2: run the frozen teacher once and cache its soft labels, keyed by content."""

from __future__ import annotations

import logging

import numpy as np
import torch

from kdflow.config import Config
from kdflow.logs import setup_logging
from kdflow.data.shards import DatasetManifest
from kdflow.errors import KdflowError
from kdflow.evaluation.teacher_floor import teacher_floor_error
from kdflow.models.loading import TeacherSource
from kdflow.softlabels import views
from kdflow.softlabels.cache import EntrySpec, SoftLabelCache
from kdflow.softlabels.codec import compress
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.training.device import resolve_device
from kdflow.training.trainer import predict_images

log = logging.getLogger(__name__)


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


def _check_floor(pred: np.ndarray, test, dataset: DatasetManifest, cfg: Config) -> None:
    floor = cfg.gate.teacher_floor(dataset.num_classes)
    error = teacher_floor_error(pred, test.labels, dataset.class_names, floor)
    if error is not None:
        if any(abs(v) > 1 for v in (*(cfg.teacher.mean or ()), *(cfg.teacher.std or ()))):
            raise KdflowError(error.problem, f"teacher.mean/std {list(cfg.teacher.mean)}/{list(cfg.teacher.std)} look "
                              "like 0-255 units, but kdflow feeds the teacher pixels in [0, 1]: divide them by 255. "
                              f"Otherwise: {error.fix}")
        raise error
    log.info("teacher top-1 on the test split: %.4f (floor gate.min_teacher_accuracy=%g)",
             float((pred == test.labels).mean()), floor)


def run_teacher_inference(
    dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str, out_dir: str, expected_digest: str = "",
    tracking_uri: str | None = None,
) -> SoftLabelRef:
    """Fill (or find) the cache entry; write a ``SoftLabelRef`` to ``out_dir`` and return it.

    The entry holds the plain view of every split and, when the run distils offline with
    augmentation, ``augment.views`` augmented views of the train split (see softlabels/views.py).
    """
    setup_logging()
    cfg = Config.from_yaml(config_yaml)
    if not teacher_uri:
        raise KdflowError("no teacher given", "pass a teacher (TorchScript, checkpoint or models:/ URI)")
    dataset = DatasetManifest.open(dataset_dir)
    source = TeacherSource(teacher_uri, cfg.teacher.arch, cfg.teacher.mean, cfg.teacher.std).reach(tracking_uri)
    digest = source.digest()
    # The given teacher's digest from the start of the run keys KFP's cache of this step; without
    # adaptation the teacher read here is that teacher, and must still be it.
    if expected_digest and cfg.teacher.adapt_epochs == 0 and digest != expected_digest:
        raise KdflowError(f"the teacher at {teacher_uri} changed after the run started (digest {digest[:12]}, "
                          f"expected {expected_digest[:12]})",
                          "run the pipeline again; do not replace a teacher while a run uses it")
    spec = EntrySpec(digest, dataset, cfg.teacher.top_k, tuple(views.plan(cfg.augment, cfg.cached_views())))
    cache = SoftLabelCache(cache_uri)
    n_views = len(spec.views) - 1
    test = dataset.load_split("test") if dataset.count("test") else None
    if cache.lookup(spec.key) is not None:
        log.info("soft-label cache hit %s: the teacher is not run", spec.key[:12])
        if test is not None:  # the floor may have been raised since the entry was written
            _check_floor(cache.load_split(spec.key, "test", test.ids).top1().numpy(), test, dataset, cfg)
        ref = SoftLabelRef(cache_uri, spec.key, True, digest, teacher_uri, n_views)
        ref.save(out_dir)
        return ref

    device = resolve_device(cfg.train.device)
    teacher = source.load(dataset.mean, dataset.std).to(device)
    check_teacher(teacher, dataset, device)
    if test is not None:  # before anything is cached: a mis-loaded teacher leaves no entry behind
        step = 8 * cfg.teacher.batch_size  # a few batches on the device at a time, not the whole split
        pred = np.concatenate([
            predict_images(teacher, torch.from_numpy(test.images[i:i + step]).to(device),
                           cfg.teacher.batch_size).argmax(-1).cpu().numpy() for i in range(0, len(test), step)])
        _check_floor(pred, test, dataset, cfg)
    k = cfg.teacher.top_k

    def infer(images_u8: np.ndarray, params: np.ndarray | None) -> dict[str, np.ndarray]:
        # predict_images works in full fp32: these labels are reused by every later run.
        views = None if params is None else torch.from_numpy(params)
        logits = predict_images(teacher, torch.from_numpy(images_u8).to(device), cfg.teacher.batch_size, views)
        return compress(logits.reshape(len(images_u8), dataset.num_classes), k)

    _, stats = cache.write(spec, infer, extra={"teacher_digest": digest, "teacher_uri": teacher_uri})
    log.info("soft-label cache miss %s: the teacher labelled %d view(s), %d reused from earlier entries",
             spec.key[:12], stats["views_computed"], stats["views_reused"])
    ref = SoftLabelRef(cache_uri, spec.key, False, digest, teacher_uri, n_views)
    ref.save(out_dir)
    return ref
