"""Plain supervised training of a classifier: how a teacher is bootstrapped or adapted."""

from __future__ import annotations

from kdflow.config import AugmentConfig, TrainConfig
from kdflow.data.shards import DatasetManifest
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.evaluation import accuracy
from kdflow.models import Classifier
from kdflow.training.batches import ArrayBatches
from kdflow.training.device import resolve_device
from kdflow.training.streaming import Resident, ShardBatches, make_batches
from kdflow.training.predict import predict
from kdflow.training.trainer import fit


def val_batches(dataset: DatasetManifest, batch_size: int, device_name: str,
                resident: Resident = "auto") -> ArrayBatches | ShardBatches | None:
    """The val split, whole on the device when it fits, else streamed (``make_batches``); None when
    the dataset has none."""
    if not dataset.count("val"):
        return None
    return make_batches(dataset, "val", batch_size, resolve_device(device_name), resident=resident)


def val_accuracy(model: Classifier, val: ArrayBatches | ShardBatches | None) -> float | None:
    """Top-1 of ``model`` on ``val`` (None without a val split)."""
    if val is None:
        return None
    pred = predict(model.to(val.device), val).argmax(-1)  # first: a streamed split learns its labels on the way
    return accuracy(pred, val.labels.cpu())


def train_supervised(model: Classifier, dataset: DatasetManifest, train_cfg: TrainConfig,
                     augmentation: AugmentConfig) -> Classifier:
    """Cross-entropy on the train split, with fresh augmented views each step; returns the model on CPU."""
    device = resolve_device(train_cfg.device)
    train = make_batches(dataset, "train", train_cfg.batch_size, device, augmentation=augmentation,
                         resident=train_cfg.resident)
    ce = build_distiller("ce", model, None, get_distiller_class("ce").Options())
    fit(ce, train, train_cfg)
    return model.cpu().eval()
