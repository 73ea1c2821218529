"""Plain supervised training of a classifier: how a teacher is bootstrapped or adapted."""

from __future__ import annotations

from kdflow.config import AugmentConfig, TrainConfig
from kdflow.data.shards import DatasetManifest
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.evaluation import accuracy
from kdflow.models import Classifier
from kdflow.training.batches import ArrayBatches
from kdflow.training.device import resolve_device
from kdflow.training.trainer import fit, predict


def val_batches(dataset: DatasetManifest, batch_size: int, device_name: str) -> ArrayBatches | None:
    """The val split in memory (read and verified once), or None when the dataset has none."""
    if not dataset.count("val"):
        return None
    return ArrayBatches(dataset.load_split("val"), batch_size, resolve_device(device_name))


def val_accuracy(model: Classifier, val: ArrayBatches | None) -> float | None:
    """Top-1 of ``model`` on ``val`` (None without a val split)."""
    if val is None:
        return None
    return accuracy(predict(model.to(val.device), val).argmax(-1), val.labels.cpu())


def train_supervised(model: Classifier, dataset: DatasetManifest, train_cfg: TrainConfig,
                     augmentation: AugmentConfig) -> Classifier:
    """Cross-entropy on the train split, with fresh augmented views each step; returns the model on CPU."""
    device = resolve_device(train_cfg.device)
    train = ArrayBatches(dataset.load_split("train"), train_cfg.batch_size, device, augmentation=augmentation)
    ce = build_distiller("ce", model, None, get_distiller_class("ce").Options())
    fit(ce, train, train_cfg)
    return model.cpu().eval()
