"""The run configuration: typed, frozen, loaded from YAML with ``yaml.safe_load``.

One ``Config`` describes a whole run. Every step receives the same resolved config (as YAML text,
so a KFP component takes one primitive string) and reads the sections it needs. Unknown keys and
wrong types are errors (see ``kdflow.typed``); value ranges are checked here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdflow.errors import ConfigError
from kdflow.typed import from_dict, to_dict


ResizeMode = Literal["squash", "short_side"]


def _check(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {problem}", fix)


SHARD_TARGET_BYTES = 32 << 20  # data.shard_size 0: shards of about 32 MiB of uint8 pixels


@dataclass(frozen=True)
class DataConfig:
    """Ingest and preprocessing (the preprocessing spec is part of the soft-label cache key).

    Splits: each sample, or each group of near-duplicates, is assigned to train, val or test by a
    hash of its content (its group's key) and ``seed``, so adding images does not move old ones.
    """

    image_size: int = 32  # every image is resized to image_size x image_size
    val_fraction: float = 0.1  # of train/ (of all data when there are no split folders), if there is no val/
    test_fraction: float = 0.2  # of train/ (of all data when there are no split folders), if there is no test/
    seed: int = 0  # seeds the split: a sample's split is drawn from a hash of its content and this seed
    # Samples per shard; 0 (the default) sizes shards by bytes: about SHARD_TARGET_BYTES of pixels,
    # 64..8192 rows (8192 32-px images, 2730 at 64 px, 222 at 224 px). Training streams a window of
    # a few shards, so their size bounds its memory; shards are in content-hash order, so every
    # shard is already a random sample of its split and a few of them shuffle well.
    shard_size: int = 0
    # squash: resize to image_size x image_size, ignoring the aspect ratio (cheap; fine for data that
    # is already square). short_side: resize the short side to image_size, then centre-crop: what
    # pretrained teachers saw (torchvision's Resize + CenterCrop), so objects keep their shape.
    resize: ResizeMode = "squash"
    # Keep near-duplicates in one split. none: every sample on its own. phash: images whose 64-bit
    # perceptual hashes differ in at most group_distance bits (and chains of them) form a group.
    # regex: files whose paths (relative to the data root) give the same group_pattern match do.
    group_by: Literal["none", "phash", "regex"] = "none"
    group_distance: int = 6  # phash: the largest Hamming distance (of 64 bits) between near-duplicates
    # regex: searched in each file's path relative to the data root; the group is the first capture
    # group (else the whole match); a file it does not match is a group of its own.
    group_pattern: str | None = None
    # Pipeline fan-out of preprocess: one decode task per this many files (the dataset does not
    # depend on it); a local run cuts its own, smaller parts for its process pool.
    files_per_part: int = 20000
    # Files larger than this many bytes are dropped unread (a report entry), judged from the listing
    # (local size, S3 object size) before any byte is fetched; 0: no cap. Pictures declaring over
    # ~89.5 Mpx are dropped from their header whatever this says (decompression bombs).
    max_file_bytes: int = 64 << 20

    def rows_per_shard(self) -> int:
        """``shard_size``, or when 0 the row count that makes a shard about SHARD_TARGET_BYTES."""
        if self.shard_size:
            return self.shard_size
        return max(64, min(8192, SHARD_TARGET_BYTES // (self.image_size * self.image_size * 3)))

    def __post_init__(self) -> None:
        import re

        _check(4 <= self.image_size <= 1024, "data.image_size", f"is {self.image_size}", "use 4..1024")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"data.{name}", f"is {v}", "use a fraction in [0, 1)")
        _check(self.val_fraction + self.test_fraction < 1.0, "data.val_fraction",
               "plus data.test_fraction leaves no training data", "make their sum less than 1")
        _check(self.shard_size >= 0, "data.shard_size", f"is {self.shard_size}",
               "use a positive count of samples per shard, or 0 to size shards by bytes")
        _check(self.max_file_bytes >= 0, "data.max_file_bytes", f"is {self.max_file_bytes}",
               "use a size in bytes (67108864 is 64 MiB), or 0 for no cap")
        _check(self.files_per_part >= 1, "data.files_per_part", f"is {self.files_per_part}",
               "use a positive number of files per preprocess decode task")
        # Past ~16 of 64 bits unrelated pictures start to match, and the search slows down sharply.
        _check(0 <= self.group_distance <= 16, "data.group_distance", f"is {self.group_distance}",
               "use 0..16 bits (6 is a good start; 0 groups only identical hashes)")
        if self.group_by == "regex":
            _check(bool(self.group_pattern), "data.group_pattern", "is not set but data.group_by is 'regex'",
                   "set data.group_pattern to a regular expression, e.g. '^(train/[^/]+/\\d+)_'")
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                _check(False, "data.group_pattern", f"is not a valid regular expression: {exc}",
                       "fix the pattern (Python 're' syntax; in YAML, single-quote it so '\\' stays literal)")
        else:
            _check(self.group_pattern is None, "data.group_pattern",
                   f"is set but data.group_by is '{self.group_by}'",
                   "set data.group_by: regex to use the pattern, or remove data.group_pattern")


@dataclass(frozen=True)
class TeacherConfig:
    """How the teacher is loaded and what of its output is cached."""

    arch: str | None = None  # kdflow model name, for state_dict checkpoints (and for bootstrap)
    # Normalisation of [0, 1] pixels the teacher was trained with; null: the dataset's train stats.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    top_k: int = 10  # logits kept per sample; full rows when the class count is <= top_k
    batch_size: int = 512  # inference batch size (teacher inference and evaluation)
    # Teacher inference fans out as one pipeline task per this many dataset shards (all splits).
    shards_per_task: int = 4
    bootstrap_epochs: int = 20  # epochs for the teacher trained when none is given
    # Teacher adaptation: fine-tune the given teacher on the train split (cross-entropy, with the
    # run's augmentation) before it labels anything. 0 epochs: off, the teacher is used as given.
    adapt_epochs: int = 0
    adapt_lr: float = 0.01  # peak learning rate of the fine-tuning (cosine schedule, train.* otherwise)
    # A checkpoint that only full pickle can load (a whole pickled model, custom classes) can run any
    # code while it loads: refused unless this is true. Weights-only checkpoints and TorchScript
    # never need it. Set it only for a file whose origin you trust.
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        _check(self.adapt_epochs >= 0, "teacher.adapt_epochs", f"is {self.adapt_epochs}", "use 0 (off) or more")
        _check(self.adapt_lr > 0, "teacher.adapt_lr", f"is {self.adapt_lr}", "use a positive learning rate")
        _check(self.top_k >= 1, "teacher.top_k", f"is {self.top_k}", "use k >= 1")
        _check(self.batch_size >= 1, "teacher.batch_size", f"is {self.batch_size}", "use a positive size")
        _check(self.shards_per_task >= 1, "teacher.shards_per_task", f"is {self.shards_per_task}",
               "use 1 or more dataset shards per teacher inference task")
        _check((self.mean is None) == (self.std is None), "teacher.mean",
               "and teacher.std must be given together", "set both, or neither")
        if self.std is not None:
            _check(all(s > 0 for s in self.std), "teacher.std", "has a value <= 0", "use positive stds")
            _check(len(self.std) == len(self.mean or ()), "teacher.std",
                   "and teacher.mean differ in length", "give one value per channel in each")


@dataclass(frozen=True)
class AugmentConfig:
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

    crop: Literal["none", "pad", "resized"] = "pad"  # pad: zero-pad and crop back; resized: random-resized-crop
    padding: int = 4  # pixels of zero padding on each side, for crop: pad
    scale: tuple[float, ...] = (0.35, 1.0)  # area fraction range, for crop: resized
    ratio: tuple[float, ...] = (0.75, 4 / 3)  # aspect ratio range, for crop: resized
    flip: bool = False  # horizontal flip with probability 1/2 (see above for why off by default)
    views: int = 8  # augmented views per training sample labelled by the teacher and cached (offline)
    seed: int = 0  # seeds the cached views' parameters

    @property
    def active(self) -> bool:
        return self.crop != "none" or self.flip

    def __post_init__(self) -> None:
        _check(self.padding >= 0, "augment.padding", f"is {self.padding}", "use 0 or more pixels")
        _check(len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1] <= 1, "augment.scale",
               f"is {list(self.scale)}", "use [min, max] with 0 < min <= max <= 1")
        _check(len(self.ratio) == 2 and 0 < self.ratio[0] <= self.ratio[1], "augment.ratio",
               f"is {list(self.ratio)}", "use [min, max] with 0 < min <= max")
        _check(0 <= self.views <= 256, "augment.views", f"is {self.views}", "use 0..256")


@dataclass(frozen=True)
class StudentConfig:
    arch: str = "convnet_s"  # kdflow model name (kdflow models lists them)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation loop, shared by every distillation method and by teacher bootstrap."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 0  # linear warm-up before the cosine decay
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Data-parallel processes (torchrun workers, one per GPU); each takes batch_size / processes of
    # every batch, so the run equals a one-process run with the same global batch.
    processes: int = 1
    sync_batchnorm: bool = False  # with processes > 1 on CUDA: BatchNorm statistics over the global batch
    checkpoint_every_steps: int = 0  # also checkpoint within an epoch every this many steps (0: at epoch ends only)
    channels_last: bool = True  # NHWC convolutions on CUDA (tensor-core friendly); no effect on the CPU
    compile: bool = False  # torch.compile the student's forward (first steps are slower while it compiles)
    # auto: keep a split whole on the device when it fits (training/streaming.py make_batches), else
    # stream its shards with bounded memory; always / never force one or the other.
    resident: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs", f"is {self.epochs}", "use at least 1")
        _check(self.processes >= 1, "train.processes", f"is {self.processes}", "use 1 or more (one per GPU)")
        _check(self.batch_size % self.processes == 0, "train.batch_size",
               f"is {self.batch_size}, not a multiple of train.processes ({self.processes})",
               "use a batch size that every process can take an equal share of")
        _check(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
               f"is {self.checkpoint_every_steps}", "use 0 (epoch ends only) or a positive number of steps")
        _check(self.batch_size >= 1, "train.batch_size", f"is {self.batch_size}", "use a positive size")
        _check(self.lr > 0, "train.lr", f"is {self.lr}", "use a positive learning rate")
        _check(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs",
               f"is {self.warmup_epochs}", "use 0 <= warmup_epochs < epochs")


@dataclass(frozen=True)
class DistillConfig:
    """Which distiller runs, and its own typed options (each distiller declares an Options class)."""

    method: str = "kd"
    options: Any = None  # resolved to the method's Options dataclass by Config.from_dict
    # offline: teacher logits come from the soft-label cache (replayed views when augmenting).
    # online: the teacher runs on every training batch, on the same augmented pixels the student sees.
    teacher: Literal["offline", "online"] = "offline"

    def __post_init__(self) -> None:
        # Imported here, not at module import: the registry pulls in torch.
        from kdflow.distillers import get_distiller_class

        cls = get_distiller_class(self.method)
        if not dataclasses.is_dataclass(self.options):
            object.__setattr__(self, "options", from_dict(cls.Options, self.options, "distill.options"))


@dataclass(frozen=True)
class EvaluateConfig:
    """How the test split is measured (accuracies as fractions in [0, 1]).

    Confidence intervals are percentile bootstraps over test samples. Cost is measured on the CPU of
    the evaluation step, student and teacher interleaved on the same machine, so their ratio is fair
    even when the absolute times are not those of the serving hardware.
    """

    bootstrap: int = 1000  # bootstrap resamples for every confidence interval (0: no intervals)
    confidence: float = 0.95  # of the intervals
    seed: int = 0  # seeds the bootstrap resampling
    ece_bins: int = 15  # equal-width confidence bins of the calibration error and reliability diagram
    latency_runs: int = 50  # timed batch-1 forward passes per model (after a warm-up)
    throughput_batch: int = 64  # batch size of the throughput measurement
    cpu_threads: int = 0  # torch CPU threads while timing (0: the CPUs this process may use: affinity, cgroup quota)
    privacy_samples: int = 2000  # at most this many training members, and as many held-out samples
    export: tuple[str, ...] = ("torchscript", "onnx")  # serving formats exported and verified
    # Largest |exported - PyTorch| logit difference on test images, relative to the largest |logit|
    # (absolute when logits are under 1): exporters reorder float32 sums; a real mistake is O(1).
    export_tolerance: float = 1e-3

    def __post_init__(self) -> None:
        _check(self.bootstrap == 0 or self.bootstrap >= 100, "evaluate.bootstrap", f"is {self.bootstrap}",
               "use 0 (no intervals) or at least 100 resamples (1000 is a good default)")
        _check(0.5 <= self.confidence < 1, "evaluate.confidence", f"is {self.confidence}", "use e.g. 0.95")
        _check(1 <= self.ece_bins <= 100, "evaluate.ece_bins", f"is {self.ece_bins}", "use 1..100 (15 is usual)")
        _check(self.latency_runs >= 5, "evaluate.latency_runs", f"is {self.latency_runs}",
               "use at least 5 (a p95 needs a few runs; 50 is a good default)")
        _check(self.throughput_batch >= 1, "evaluate.throughput_batch", f"is {self.throughput_batch}",
               "use a positive batch size")
        _check(self.cpu_threads >= 0, "evaluate.cpu_threads", f"is {self.cpu_threads}", "use 0 (default) or more")
        _check(self.privacy_samples >= 10, "evaluate.privacy_samples", f"is {self.privacy_samples}",
               "use at least 10")
        unknown = sorted(set(self.export) - {"torchscript", "onnx"})
        _check(not unknown, "evaluate.export", f"names unknown format(s) {unknown}",
               "use a list of torchscript and onnx (or [] for no export)")
        _check(self.export_tolerance > 0, "evaluate.export_tolerance", f"is {self.export_tolerance}",
               "use a positive relative tolerance on logits, e.g. 0.001")


@dataclass(frozen=True)
class GateConfig:
    """The ship/no-ship decision on the test split (accuracies as fractions in [0, 1]; null: no limit).

    Absolute checks decide whether the student is registered. The champion check decides whether it
    may replace the registry's ``champion`` (automatically with auto-promote, or by ``kdflow promote``).
    """

    min_accuracy: float = 0.0  # floor for the student's top-1
    min_agreement: float = 0.0  # floor for the fraction of test images where student and teacher agree
    # Floor for the teacher's top-1, checked at teacher inference before anything is cached: a teacher
    # fed the wrong normalisation or class order stops the run there, not after a student learnt from it.
    # null: min(0.5, 5 / classes), far above chance yet below any teacher worth distilling.
    min_teacher_accuracy: float | None = None
    max_drop: float = 0.03  # largest allowed teacher top-1 minus student top-1
    max_latency_ms: float | None = None  # largest student CPU latency at batch 1 (p95, milliseconds)
    max_size_mb: float | None = None  # largest student size on disk (MB, 10^6 bytes)
    max_mia_auc: float | None = None  # largest membership-inference attack AUC (0.5 = no leak)
    # Non-inferiority margin against the champion on the same test images: the student is promotable
    # when the lower end of the confidence interval of (student - champion) top-1 is >= -this.
    champion_tolerance: float = 0.01
    # Compare with a champion whose dataset fingerprint differs from this run's (on the test images
    # both were evaluated on). Off: such a champion is not compared, the student is not promotable
    # (it is registered; promote it by hand), and the verdict says so.
    compare_other_data: bool = False

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "min_agreement", "min_teacher_accuracy", "max_drop", "champion_tolerance"):
            v = getattr(self, name)
            _check(v is None or 0 <= v <= 1, f"gate.{name}", f"is {v}", "use a fraction in [0, 1] (0.9 means 90%)")
        if self.max_mia_auc is not None:
            _check(0.5 <= self.max_mia_auc <= 1, "gate.max_mia_auc", f"is {self.max_mia_auc}",
                   "use an AUC in [0.5, 1] (0.5 is a random guess; 0.6 is a common cap)")
        for name in ("max_latency_ms", "max_size_mb"):
            v = getattr(self, name)
            _check(v is None or v > 0, f"gate.{name}", f"is {v}", "use a positive number, or null for no limit")


    def teacher_floor(self, num_classes: int) -> float:
        """The teacher's top-1 floor for a task with ``num_classes`` classes."""
        if self.min_teacher_accuracy is not None:
            return self.min_teacher_accuracy
        return min(0.5, 5 / max(num_classes, 1))


@dataclass(frozen=True)
class RegistryConfig:
    model_name: str = "kdflow-student"  # MLflow registered model name
    alias: str = "challenger"  # alias a passing student receives (champion moves only by promotion)
    experiment: str = "kdflow"  # MLflow experiment of the runs

    def __post_init__(self) -> None:
        _check(bool(self.model_name.strip()), "registry.model_name", "is empty", "name the model")
        # champion moves only through promotion, which checks the gate against it and keeps its history.
        _check(self.alias != "champion", "registry.alias", "is 'champion'",
               "keep a registration alias such as 'challenger' and pass --auto-promote (pipeline parameter "
               "auto_promote) to promote a student that passes the gate against the champion")


@dataclass(frozen=True)
class Config:
    """A whole run. ``data_uri`` and friends are inputs a CLI flag or pipeline parameter may override."""

    data_uri: str | None = None  # image folder (root/<class>/<file>, optionally train/ and test/)
    teacher_uri: str | None = None  # TorchScript file, state_dict checkpoint or models:/ URI
    cache_uri: str | None = None  # soft-label cache root: a folder, file:// or s3://
    tracking_uri: str | None = None  # MLflow tracking URI
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def __post_init__(self) -> None:
        from kdflow.distillers import get_distiller_class
        _check(not self.registry.model_name.endswith(".kdflow-lock"), "registry.model_name",
               f"is {self.registry.model_name!r}",
               "the suffix .kdflow-lock is kdflow's registry lock: choose another name")
        get_distiller_class(self.distill.method).check_run(self.distill.options, self)
        if self.augment.active and self.augment.views == 0 and self.replays_cache():
            raise ConfigError(
                "augment is on but augment.views is 0: the student would see augmented pictures while "
                "the cached teacher labels describe the plain ones",
                "set augment.views >= 1 (replayed teacher views), distill.teacher: online, or turn "
                "augmentation off (augment.crop: none, augment.flip: false)",
            )

    def teacher_mode(self) -> str:
        """``none`` (the method uses no teacher), ``offline`` (cached teacher logits) or ``online``
        (the teacher runs on every batch: asked for, or needed by the method for its features)."""
        from kdflow.distillers import get_distiller_class

        cls = get_distiller_class(self.distill.method)
        if not cls.uses_teacher:
            return "none"
        online = cls.requires_online(self.distill.options) or self.distill.teacher == "online"
        return "online" if online else "offline"

    def replays_cache(self) -> bool:
        """True when the student learns from cached teacher logits."""
        return self.teacher_mode() == "offline"

    def cached_views(self) -> int:
        """Augmented teacher views the soft-label cache must hold for this run (0: the plain view only)."""
        return self.augment.views if self.augment.active and self.replays_cache() else 0

    @classmethod
    def from_dict(cls, data: Any) -> "Config":
        return from_dict(cls, data)

    @classmethod
    def from_yaml(cls, text: str, source: str = "config") -> "Config":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source} is not valid YAML: {exc}", "fix the YAML syntax") from exc
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", "pass the path of a YAML file")
        return cls.from_yaml(p.read_text(), source=str(p))

    def to_dict(self) -> dict:
        return to_dict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)
