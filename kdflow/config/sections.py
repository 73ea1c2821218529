"""The input and training sections of the run config: data, teacher, augment, student, train.

Each field's ``description`` is what ``kdflow config --schema`` tells an editor; comments say why.
Ranges are checked by each section's validator, which raises a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from kdflow.config.base import Strict
from kdflow.util.errors import ConfigError

ResizeMode = Literal["squash", "short_side"]

SHARD_TARGET_BYTES = 32 << 20  # data.shard_size 0: shards of about 32 MiB of uint8 pixels


def check(ok: bool, key: str, problem: str, fix: str) -> None:
    """A range check: raise a ConfigError naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key '{key}' {problem}", fix)


class DataConfig(Strict):
    """Ingest and preprocessing (the preprocessing spec is part of the soft-label cache key).

    Splits: each sample, or each group of near-duplicates, is assigned to train, val or test by a
    hash of its content (its group's key) and ``seed``, so adding images does not move old ones.
    """

    image_size: int = Field(32, description="every image is resized to image_size x image_size")
    val_fraction: float = Field(0.1, description="of train/ (of all data when there are no split folders), "
                                                 "if there is no val/")
    test_fraction: float = Field(0.2, description="of train/ (of all data when there are no split folders), "
                                                  "if there is no test/")
    seed: int = Field(0, description="seeds the split: a sample's split is drawn from a hash of its content "
                                     "and this seed")
    # Training streams a window of a few shards, so their size bounds its memory; shards are in
    # content-hash order, so every shard is already a random sample of its split.
    shard_size: int = Field(0, description="samples per shard; 0 sizes shards by bytes: about 32 MiB of pixels, "
                                           "64..8192 rows (8192 32-px images, 2730 at 64 px, 222 at 224 px)")
    # short_side is what pretrained teachers saw (torchvision's Resize + CenterCrop).
    resize: ResizeMode = Field("squash", description="squash: resize to image_size x image_size, ignoring the "
                                                     "aspect ratio. short_side: resize the short side to "
                                                     "image_size, then centre-crop, so objects keep their shape")
    group_by: Literal["none", "phash", "regex"] = Field(
        "none", description="keep near-duplicates in one split. none: every sample on its own. phash: images "
                            "whose 64-bit perceptual hashes differ in at most group_distance bits (and chains of "
                            "them) form a group. regex: files whose paths give the same group_pattern match do")
    group_distance: int = Field(6, description="phash: the largest Hamming distance (of 64 bits) between "
                                               "near-duplicates")
    group_pattern: str | None = Field(None, description="regex: searched in each file's path relative to the data "
                                                        "root; the group is the first capture group (else the whole "
                                                        "match); a file it does not match is a group of its own")
    # The dataset does not depend on it; a local run cuts its own, smaller parts for its process pool.
    files_per_part: int = Field(20000, description="pipeline fan-out of preprocess: one decode task per this "
                                                   "many files")
    # Pictures declaring over ~89.5 Mpx are dropped from their header whatever this says (decompression bombs).
    max_file_bytes: int = Field(64 << 20, description="files larger than this many bytes are dropped unread (a "
                                                      "report entry), judged from the listing before any byte is "
                                                      "fetched; 0: no cap")

    def rows_per_shard(self) -> int:
        """``shard_size``, or when 0 the row count that makes a shard about SHARD_TARGET_BYTES."""
        if self.shard_size:
            return self.shard_size
        return max(64, min(8192, SHARD_TARGET_BYTES // (self.image_size * self.image_size * 3)))

    @model_validator(mode="after")
    def _ranges(self) -> "DataConfig":
        check(4 <= self.image_size <= 1024, "data.image_size", f"is {self.image_size}", "use 4..1024")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            check(0.0 <= v < 1.0, f"data.{name}", f"is {v}", "use a fraction in [0, 1)")
        check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction",
              "plus data.test_fraction leaves no training data", "make their sum less than 1")
        check(self.shard_size >= 0, "data.shard_size", f"is {self.shard_size}",
              "use a positive count of samples per shard, or 0 to size shards by bytes")
        check(self.max_file_bytes >= 0, "data.max_file_bytes", f"is {self.max_file_bytes}",
              "use a size in bytes (67108864 is 64 MiB), or 0 for no cap")
        check(self.files_per_part >= 1, "data.files_per_part", f"is {self.files_per_part}",
              "use a positive number of files per preprocess decode task")
        # Past ~16 of 64 bits unrelated pictures start to match, and the search slows down sharply.
        check(0 <= self.group_distance <= 16, "data.group_distance", f"is {self.group_distance}",
              "use 0..16 bits (6 is a good start; 0 groups only identical hashes)")
        if self.group_by == "regex":
            check(bool(self.group_pattern), "data.group_pattern", "is not set but data.group_by is 'regex'",
                  "set data.group_pattern to a regular expression, e.g. '^(train/[^/]+/\\d+)_'")
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                check(False, "data.group_pattern", f"is not a valid regular expression: {exc}",
                      "fix the pattern (Python 're' syntax; in YAML, single-quote it so '\\' stays literal)")
        else:
            check(self.group_pattern is None, "data.group_pattern",
                  f"is set but data.group_by is '{self.group_by}'",
                  "set data.group_by: regex to use the pattern, or remove data.group_pattern")
        return self


class TeacherConfig(Strict):
    """How the teacher is loaded and what of its output is cached."""

    arch: str | None = Field(None, description="kdflow model name, for state_dict checkpoints (and for bootstrap)")
    mean: tuple[float, ...] | None = Field(None, description="normalisation of [0, 1] pixels the teacher was "
                                                             "trained with; null: the dataset's train stats")
    std: tuple[float, ...] | None = Field(None, description="see mean")
    top_k: int = Field(10, description="logits kept per sample; full rows when the class count is <= top_k")
    batch_size: int = Field(512, description="inference batch size (teacher inference and evaluation)")
    shards_per_task: int = Field(4, description="teacher inference fans out as one pipeline task per this many "
                                                "dataset shards (all splits)")
    bootstrap_epochs: int = Field(20, description="epochs for the teacher trained when none is given")
    adapt_epochs: int = Field(0, description="teacher adaptation: fine-tune the given teacher on the train split "
                                             "(cross-entropy, with the run's augmentation) before it labels "
                                             "anything. 0 epochs: off, the teacher is used as given")
    adapt_lr: float = Field(0.01, description="peak learning rate of the fine-tuning (cosine schedule, train.* "
                                              "otherwise)")
    # Unpickling can run any code while it loads; weights-only checkpoints and TorchScript never need it.
    trust_pickle: bool = Field(False, description="load a checkpoint that only full pickle can load (a whole "
                                                  "pickled model, custom classes). Set it only for a file whose "
                                                  "origin you trust")

    @model_validator(mode="after")
    def _ranges(self) -> "TeacherConfig":
        check(self.adapt_epochs >= 0, "teacher.adapt_epochs", f"is {self.adapt_epochs}", "use 0 (off) or more")
        check(self.adapt_lr > 0, "teacher.adapt_lr", f"is {self.adapt_lr}", "use a positive learning rate")
        check(self.top_k >= 1, "teacher.top_k", f"is {self.top_k}", "use k >= 1")
        check(self.batch_size >= 1, "teacher.batch_size", f"is {self.batch_size}", "use a positive size")
        check(self.shards_per_task >= 1, "teacher.shards_per_task", f"is {self.shards_per_task}",
              "use 1 or more dataset shards per teacher inference task")
        check((self.mean is None) == (self.std is None), "teacher.mean",
              "and teacher.std must be given together", "set both, or neither")
        if self.std is not None:
            check(all(s > 0 for s in self.std), "teacher.std", "has a value <= 0", "use positive stds")
            check(len(self.std) == len(self.mean or ()), "teacher.std",
                  "and teacher.mean differ in length", "give one value per channel in each")
        return self


class AugmentConfig(Strict):
    """Per-batch augmentation on the training device, and the teacher views cached for replay.

    Defaults: pad-and-crop on, flip OFF. A horizontal flip changes the class of digits, letters and
    many traffic signs, and a silently wrong label costs more than the flip gains on natural images;
    turn it on (``flip: true``) for photos of objects and scenes such as CIFAR-10 or ImageNet.

    Offline distillation replays the cached views: each epoch the student sees, per sample, one of
    the ``views`` pictures the teacher labelled, pixel for pixel, drawn uniformly by (seed, epoch);
    with more epochs than views, views repeat. What is not replayed: nothing is applied on top of a
    view (no colour jitter, no mixup or cutmix), because the cached labels would then describe
    another picture; such augmentation needs ``distill.teacher: online``. Validation and evaluation
    always show the plain picture. Views are re-rendered from their stored boxes, so identity is bit
    for bit when the teacher and the student run on the same kind of device (the pipeline runs both
    on GPU nodes); a resized crop rendered on a CPU and on a GPU can differ in the last bit of a pixel.
    """

    crop: Literal["none", "pad", "resized"] = Field("pad", description="pad: zero-pad and crop back; resized: "
                                                                       "random-resized-crop")
    padding: int = Field(4, description="pixels of zero padding on each side, for crop: pad")
    scale: tuple[float, ...] = Field((0.35, 1.0), description="area fraction range, for crop: resized")
    ratio: tuple[float, ...] = Field((0.75, 4 / 3), description="aspect ratio range, for crop: resized")
    flip: bool = Field(False, description="horizontal flip with probability 1/2 (off by default: it changes the "
                                          "class of digits, letters and many signs)")
    views: int = Field(8, description="augmented views per training sample labelled by the teacher and cached "
                                      "(offline)")
    seed: int = Field(0, description="seeds the cached views' parameters")

    @property
    def active(self) -> bool:
        return self.crop != "none" or self.flip

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentConfig":
        check(self.padding >= 0, "augment.padding", f"is {self.padding}", "use 0 or more pixels")
        check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1, "augment.scale",
              f"is {list(self.scale)}", "use [min, max] with 0 < min <= max <= 1")
        check(len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1], "augment.ratio",
              f"is {list(self.ratio)}", "use [min, max] with 0 < min <= max")
        check(0 <= self.views <= 256, "augment.views", f"is {self.views}", "use 0..256")
        return self


class StudentConfig(Strict):
    """The network being trained."""

    arch: str = Field("convnet_s", description="kdflow model name (kdflow models lists them)")


class TrainConfig(Strict):
    """The optimisation loop, shared by every distillation method and by teacher bootstrap."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = Field(0, description="linear warm-up before the cosine decay")
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    # Each process takes batch_size / processes of every batch, so the run equals a one-process run
    # with the same global batch.
    processes: int = Field(1, description="data-parallel processes (torchrun workers, one per GPU)")
    sync_batchnorm: bool = Field(False, description="with processes > 1 on CUDA: BatchNorm statistics over the "
                                                    "global batch")
    checkpoint_every_steps: int = Field(0, description="also checkpoint within an epoch every this many steps (0: "
                                                       "at epoch ends only)")
    channels_last: bool = Field(True, description="NHWC convolutions on CUDA (tensor-core friendly); no effect on "
                                                  "the CPU")
    compile: bool = Field(False, description="torch.compile the student's forward (first steps are slower while "
                                             "it compiles)")
    resident: Literal["auto", "always", "never"] = Field(
        "auto", description="auto: keep a split whole on the device when it fits, else stream its shards with "
                            "bounded memory; always / never force one or the other")

    @model_validator(mode="after")
    def _ranges(self) -> "TrainConfig":
        check(self.epochs >= 1, "train.epochs", f"is {self.epochs}", "use at least 1")
        check(self.processes >= 1, "train.processes", f"is {self.processes}", "use 1 or more (one per GPU)")
        check(self.batch_size % self.processes == 0, "train.batch_size",
              f"is {self.batch_size}, not a multiple of train.processes ({self.processes})",
              "use a batch size that every process can take an equal share of")
        check(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
              f"is {self.checkpoint_every_steps}", "use 0 (epoch ends only) or a positive number of steps")
        check(self.batch_size >= 1, "train.batch_size", f"is {self.batch_size}", "use a positive size")
        check(self.lr > 0, "train.lr", f"is {self.lr}", "use a positive learning rate")
        check(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs",
              f"is {self.warmup_epochs}", "use 0 <= warmup_epochs < epochs")
        return self
