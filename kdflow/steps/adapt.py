"""Step 1b (optional): adapt the given teacher to this dataset before it labels anything.

A pretrained teacher meets data that differ from what it was trained on (other compression, other
cameras): the shared CIFAR-10 ResNet-56 loses 10 points on the JPEG copy. Fine-tuning it on the
train split (cross-entropy, the run's augmentation) first gives the student a better teacher.

The adapted teacher is a kdflow checkpoint stored beside the soft-label cache under a key of what
made it (the teacher's digest, the dataset fingerprint, the fine-tuning settings), so a later run
reuses it instead of training again, and its own content digest keys the soft labels it writes.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from kdflow.config import Config
from kdflow.data.shards import DatasetManifest
from kdflow.digest import digest_of
from kdflow.logs import setup_logging
from kdflow.models.loading import TeacherSource, save_checkpoint
from kdflow.storage import join, storage_for
from kdflow.training import augment
from kdflow.training.supervised import train_supervised, val_accuracy

log = logging.getLogger(__name__)


def run_adaptation(dataset_dir: str, teacher_uri: str, config_yaml: str, cache_uri: str) -> dict:
    """Returns {"teacher_uri": the teacher to use from here on, "adapted", "reused", val accuracies}."""
    setup_logging()
    cfg = Config.from_yaml(config_yaml)
    if cfg.teacher.adapt_epochs == 0:
        return {"teacher_uri": teacher_uri, "adapted": False, "reused": False}
    dataset = DatasetManifest.open(dataset_dir)
    source = TeacherSource(teacher_uri, cfg.teacher.arch, cfg.teacher.mean, cfg.teacher.std)
    train_cfg = dataclasses.replace(cfg.train, epochs=cfg.teacher.adapt_epochs, lr=cfg.teacher.adapt_lr,
                                    warmup_epochs=0)
    name = digest_of({"teacher": source.digest(), "dataset": dataset.fingerprint,
                      "train": dataclasses.asdict(train_cfg), "augment": augment.spec(cfg.augment)})
    uri = join(cache_uri, "teachers", f"adapted-{name}.pt")
    store = storage_for(uri)
    if store.exists(uri):
        log.info("teacher adaptation: reusing %s", uri)
        return {"teacher_uri": uri, "adapted": True, "reused": True}

    model, arch = source.load_trainable(dataset.mean, dataset.std)
    before = val_accuracy(model, dataset, cfg.teacher.batch_size, cfg.train.device)
    log.info("teacher adaptation: fine-tuning %s for %d epochs at lr %g (val accuracy before: %s)",
             arch, train_cfg.epochs, train_cfg.lr, before)
    torch.manual_seed(train_cfg.seed)
    train_supervised(model, dataset, train_cfg, cfg.augment)
    after = val_accuracy(model, dataset, cfg.teacher.batch_size, cfg.train.device)
    store.write_bytes(uri, save_checkpoint(model.cpu(), arch, dataset.num_classes))  # all or nothing
    log.info("teacher adaptation: saved %s (val accuracy after: %s)", uri, after)
    return {"teacher_uri": uri, "adapted": True, "reused": False, "val_accuracy_before": before,
            "val_accuracy_after": after}
