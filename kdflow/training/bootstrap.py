"""A teacher for when none is given: a larger network trained by the same code, cross-entropy only.

Used by the embedded default (and by anyone who wants a quick baseline teacher). The checkpoint is
named by the dataset fingerprint and the training settings and reused when present, so repeated runs
keep the same teacher, the same teacher digest, and so hit the soft-label cache.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from kdflow.config import Config
from kdflow.data.preprocess import preprocess
from kdflow.storage.digest import digest_of
from kdflow.training import augment
from kdflow.models import Classifier, create_model
from kdflow.models.loading import save_checkpoint
from kdflow.storage import storage_for
from kdflow.training.supervised import train_supervised, val_accuracy, val_batches

log = logging.getLogger(__name__)

DEFAULT_ARCH = "convnet_m"


@dataclass(frozen=True)
class Bootstrapped:
    """How a bootstrapped teacher came about."""

    arch: str
    reused: bool  # found from an earlier run (same data and settings), not trained now
    val_accuracy: float | None = None  # when trained now (None: no val split)


def bootstrap_teacher(data_uri: str, cfg: Config, teachers_dir: str) -> tuple[str, Bootstrapped]:
    """Return (checkpoint path, how it came about) of a teacher trained on ``data_uri``'s train split."""
    arch = cfg.teacher.arch or DEFAULT_ARCH
    train_cfg = cfg.train.replace(epochs=cfg.teacher.bootstrap_epochs, warmup_epochs=0)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = preprocess(data_uri, tmp, cfg.data)
        name = digest_of({"dataset": dataset.fingerprint, "arch": arch, "train": train_cfg.to_dict(),
                          "augment": augment.spec(cfg.augment)})
        path = Path(teachers_dir) / f"teacher-{arch}-{name[:16]}.pt"
        if path.is_file():
            log.info("bootstrap teacher: reusing %s", path)
            return str(path), Bootstrapped(arch, reused=True)
        log.info("bootstrap teacher: training %s for %d epochs (no teacher was given)", arch, train_cfg.epochs)
        torch.manual_seed(train_cfg.seed)
        model = Classifier(create_model(arch, dataset.num_classes), dataset.mean, dataset.std)
        train_supervised(model, dataset, train_cfg, cfg.augment)
        val_acc = val_accuracy(model, val_batches(dataset, cfg.teacher.batch_size, train_cfg.device))
    storage_for(str(path)).write_bytes(str(path), save_checkpoint(model.cpu(), arch, dataset.num_classes))
    log.info("bootstrap teacher: saved %s (val accuracy %s)", path, val_acc)
    return str(path), Bootstrapped(arch, reused=False, val_accuracy=val_acc)
