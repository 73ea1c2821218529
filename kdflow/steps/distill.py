"""Step 3: distil the student from the cached soft labels (or the teacher online), tracked in MLflow.

Preemption: a step killed at any point and started again as a KFP retry does (same pipeline run,
same inputs, a new empty output folder) resumes from its last checkpoint and ends with the student an
uninterrupted run would have made (bit for bit on the CPU; see kdflow.training.checkpoints for CUDA),
in the same MLflow run. The checkpoints live at ``<cache_uri>/checkpoints/<run key>/``, the run key
being the digest of ``run_identity`` (pipeline run, dataset, soft labels, teacher, config, sweep trial,
number of processes), never in the model artifact, which holds ``student.pt`` alone. A call without a
pipeline run (the library, benchmarks) has no identity to share a location under and checkpoints
nothing. A lifecycle rule on the ``checkpoints/`` prefix removes them after the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from kdflow import __version__
from kdflow.distillers.preflight import check_models
from kdflow.config import Config
from kdflow.storage.digest import digest_of
from kdflow.data.shards import DatasetManifest
from kdflow.evaluation import accuracy
from kdflow.registry.lineage import config_hash
from kdflow.distillers import build_distiller
from kdflow.distillers.base import Distiller
from kdflow.util.errors import CacheError
from kdflow.models import Classifier, create_model
from kdflow.models.features import eager_twin, is_compiled
from kdflow.models.loading import TeacherSource, save_checkpoint
from kdflow.softlabels.cache import SoftLabelCache
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.registry.tags import Tag
from kdflow.steps.preamble import begin_step
from kdflow.storage import join, storage_for
from kdflow.training.streaming import make_batches, shard_soft_labels
from kdflow.training import checkpoints, distributed, launch
from kdflow.training.device import resolve_device
from kdflow.training.trainer import Batches, fit
from kdflow.training.predict import predict

log = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"
# On the step's MLflow run, from its creation: a retry finds the run its killed attempt started by this
# tag (set in the same call that creates the run, so no kill can leave a run without it).
RESUME_TAG = "kdflow.resume_key"


@dataclass(frozen=True)
class DistillPaths:
    """Where a distillation reads and writes."""

    dataset_dir: str  # the preprocessed dataset
    softlabels_dir: str  # the soft-label reference (kdflow.softlabels.ref)
    out_dir: str  # where student.pt goes
    tracking_uri: str | None  # the MLflow server; None: $MLFLOW_TRACKING_URI


@dataclass(frozen=True)
class DistillRun:
    """What names a distillation and where it reports: the same on every retry of one pipeline task."""

    pipeline_run: str = ""  # the pipeline run's name; empty: nothing is checkpointed
    pipeline_run_id: str = ""  # its unique id (KFP's pipeline_job_uuid): two runs may share a name
    parent_run_id: str = ""  # the MLflow run this one is a child of (a sweep's trials)
    run_name: str = ""  # the MLflow run's name; empty: <method>-<student arch>
    teacher_input_digest: str = ""  # the teacher as given to the run, before adaptation


def _tags(dataset: DatasetManifest, ref: SoftLabelRef, cfg: Config, run: DistillRun) -> dict[str, str]:
    tags = {
        Tag.DATASET_FINGERPRINT: dataset.fingerprint,
        Tag.CONFIG_HASH: config_hash(cfg),
        Tag.CODE_VERSION: __version__,
        Tag.TEACHER_DIGEST: ref.teacher_digest,
        Tag.TEACHER_URI: ref.teacher_uri,
        Tag.CACHE_KEY: ref.cache_key,
        Tag.CACHE_HIT: str(ref.cache_hit).lower(),
        Tag.PIPELINE_RUN: run.pipeline_run,
    }
    # The teacher as given decides the champion check; without adaptation it labelled the data itself.
    if run.teacher_input_digest or cfg.teacher.adapt_epochs == 0:
        tags[Tag.TEACHER_INPUT_DIGEST] = run.teacher_input_digest or ref.teacher_digest
    return tags


def run_identity(dataset: DatasetManifest, ref: SoftLabelRef, cfg: Config, run: DistillRun,
                 world: int) -> dict[str, str | int]:
    """What one distillation is: equal on every retry of a pipeline run's task, different for anything
    that changes what it trains or where it reports. The whole config counts (not only the lineage's
    config hash): the resumed MLflow run holds the config as params, which MLflow cannot change. The
    number of processes counts too: DDP results depend on it, so another world size starts over.
    ``run.pipeline_run_id``: the run's unique id; the pipeline run's name is a display name, which two
    runs may share."""
    return {"pipeline_run": run.pipeline_run, "pipeline_run_id": run.pipeline_run_id,
            "dataset_fingerprint": dataset.fingerprint, "cache_key": ref.cache_key,
            "teacher_digest": ref.teacher_digest,
            "teacher_input_digest": run.teacher_input_digest, "config_hash": config_hash(cfg),
            "config": digest_of(cfg.to_dict()), "parent_run_id": run.parent_run_id, "run_name": run.run_name,
            "world": world, "code_version": __version__}


def _previous_run(exp: str, key: str) -> str | None:
    """The MLflow run an earlier attempt of this step started (killed while RUNNING, or finished),
    or None. The oldest one if several: the first attempt's."""
    from mlflow import MlflowClient

    runs = MlflowClient().search_runs([exp], filter_string=f"tags.`{RESUME_TAG}` = '{key}'",
                                      order_by=["attributes.start_time ASC"], max_results=5)
    return runs[0].info.run_id if runs else None


def run_distillation(
    dataset_dir: str,
    softlabels_dir: str,
    config_yaml: str,
    out_dir: str,
    tracking_uri: str | None,
    pipeline_run: str = "",
    parent_run_id: str = "",
    run_name: str = "",
    teacher_input_digest: str = "",
    pipeline_run_id: str = "",
) -> dict:
    """Train the student; write ``student.pt`` to ``out_dir``; log the run and model to MLflow.

    ``parent_run_id`` makes the run a child of that MLflow run (a sweep's trials); ``run_name``
    defaults to ``<method>-<student arch>``. With ``train.processes`` > 1 it runs under torchrun
    (DistributedDataParallel), one process per GPU of the task. ``pipeline_run`` (the pipeline run's
    name) and ``pipeline_run_id`` (its unique id) scope the checkpoints: empty, nothing is checkpointed.
    Returns {"run_id", "model_uri", "final_metrics", "checkpoints" (their folder, "" when none)}.
    """
    cfg = begin_step(config_yaml, heavy=True)
    check_models(cfg)  # pre-flight: what needs the networks (hint's layer names), before MLflow or data
    if cfg.train.processes > 1 and not distributed.is_torchrun_worker():
        # One task, N GPUs: the same call runs again in N torchrun workers; rank 0's result is the step's.
        launch.check_gpus(cfg.train.processes, resolve_device(cfg.train.device))
        return launch.distributed_call(cfg.train.processes, "kdflow.steps.distill:run_distillation", dict(
            dataset_dir=dataset_dir, softlabels_dir=softlabels_dir, config_yaml=config_yaml, out_dir=out_dir,
            tracking_uri=tracking_uri, pipeline_run=pipeline_run, parent_run_id=parent_run_id,
            run_name=run_name, teacher_input_digest=teacher_input_digest, pipeline_run_id=pipeline_run_id))
    paths = DistillPaths(dataset_dir=dataset_dir, softlabels_dir=softlabels_dir, out_dir=out_dir,
                         tracking_uri=tracking_uri)
    run = DistillRun(pipeline_run=pipeline_run, pipeline_run_id=pipeline_run_id, parent_run_id=parent_run_id,
                     run_name=run_name, teacher_input_digest=teacher_input_digest)
    ctx = distributed.init(resolve_device(cfg.train.device))
    try:
        return _distill(ctx, cfg, paths, run)
    finally:
        distributed.destroy(ctx)


@dataclass
class _Prepared:
    """What a process trains, resolved before any MLflow run starts."""

    dataset: DatasetManifest
    ref: SoftLabelRef
    identity: dict[str, str | int]  # run_identity
    ckpt_dir: str | None  # None: no checkpoints
    previous: dict[str, Any] | None  # the checkpoint to resume from (read by rank 0 only)
    train: Batches
    student: Classifier
    distiller: Distiller
    example: torch.Tensor  # float [2, 3, H, W] on the CPU: the logged model's input shape
    validate: Callable[[], dict[str, float]] | None  # rank 0, with a val split


def _distill(ctx: distributed.DistContext, cfg: Config, paths: DistillPaths, run: DistillRun) -> dict:
    """One process's part: every rank trains on its slice of each batch; rank 0 alone validates,
    logs to MLflow and writes the student (DDP keeps the weights equal on every rank)."""
    from kdflow.registry import tracking

    # First: an unreachable MLflow is a clear error in seconds, not after the data is loaded.
    tracking_uri = tracking.use_tracking(paths.tracking_uri)
    job = _prepare(ctx, cfg, paths, run, tracking_uri)
    if not ctx.is_main:
        fit(job.distiller, job.train, cfg.train, checkpoint_dir=job.ckpt_dir, checkpoint_identity=job.identity,
            dist=ctx)
        return {}
    return _train_tracked(ctx, cfg, paths, run, job, tracking_uri)


def _prepare(ctx: distributed.DistContext, cfg: Config, paths: DistillPaths, run: DistillRun,
             tracking_uri: str) -> _Prepared:
    dataset, ref = _open_inputs(cfg, paths)
    cache = SoftLabelCache(ref.cache_uri)
    identity = run_identity(dataset, ref, cfg, run, ctx.world)
    # Shared by the ranks and by every retry of this task (object storage across nodes and pods).
    ckpt_dir = checkpoints.location(ref.cache_uri, identity) if run.pipeline_run else None
    if ckpt_dir is None and ctx.is_main:
        log.info("no pipeline run given: this run writes no checkpoints (a preempted call starts over)")
    previous = _checkpoint_to_resume(ctx, ckpt_dir, identity)
    train = _train_batches(ctx, cfg, dataset, ref, cache, _resident(cfg, previous))
    val = (make_batches(dataset, "val", cfg.teacher.batch_size, ctx.device, resident=cfg.train.resident)
           if dataset.count("val") and ctx.is_main else None)
    # Validation agreement with the teacher is reported for every method, the baseline included
    # (the teacher's top-1 only: [N_val] ints).
    teacher_top1 = cache.load_split(ref.cache_key, "val", val.ids).top1() if val is not None else None
    student, distiller, example = _models(ctx, cfg, dataset, ref, train, tracking_uri)
    validate = _validation(student, val, teacher_top1) if val is not None else None
    return _Prepared(dataset, ref, identity, ckpt_dir, previous, train, student, distiller, example, validate)


def _open_inputs(cfg: Config, paths: DistillPaths) -> tuple[DatasetManifest, SoftLabelRef]:
    dataset = DatasetManifest.open(paths.dataset_dir)
    ref = SoftLabelRef.load(paths.softlabels_dir)
    if cfg.replays_cache() and ref.views != cfg.cached_views():
        raise CacheError(f"the soft labels hold {ref.views} augmented view(s) but this config replays "
                         f"{cfg.cached_views()}", "run teacher inference and distillation with the same config")
    return dataset, ref


def _checkpoint_to_resume(ctx: distributed.DistContext, ckpt_dir: str | None,
                          identity: dict[str, str | int]) -> dict[str, Any] | None:
    """Rank 0's read of the checkpoint (None without one), refused here, before an MLflow run is
    resumed, when it is not this run's."""
    previous = checkpoints.read(ckpt_dir) if ctx.is_main else None
    if previous is not None:
        checkpoints.check(ckpt_dir, previous, {"run": identity})
        log.info("resuming from the checkpoint in %s (%d epoch(s) done, %d step(s) into the next)", ckpt_dir,
                 previous["epoch"] + 1, previous.get("step", 0))
    return previous


def _resident(cfg: Config, previous: dict[str, Any] | None) -> str:
    """``train.resident``, except that a resumed run keeps the kind of batches it checkpointed: resident
    and streamed batches shuffle differently, so another kind would change its data order."""
    resident = cfg.train.resident
    if resident == "auto" and previous is not None and previous.get("resident") is not None:
        resident = "always" if previous["resident"] else "never"
        log.info("resuming with the %s split the checkpoint was trained on",
                 "resident" if previous["resident"] else "streamed")
    return resident


def _train_batches(ctx: distributed.DistContext, cfg: Config, dataset: DatasetManifest, ref: SoftLabelRef,
                   cache: SoftLabelCache, resident: str) -> Batches:
    # Offline methods replay the cached views (or the plain view when the run does not augment),
    # loaded per dataset shard: with the split when it is resident, with each shard when streaming.
    soft_train = (shard_soft_labels(cache, ref.cache_key, "train", augmented=ref.views > 0)
                  if cfg.replays_cache() else None)
    # Rank 0 decides (from its checkpoint and its device's memory), and its decision is every rank's.
    return make_batches(dataset, "train", cfg.train.batch_size, ctx.device, soft=soft_train,
                        augmentation=cfg.augment, resident=resident,
                        agree=lambda keep: distributed.broadcast_object(keep, ctx))


def _models(ctx: distributed.DistContext, cfg: Config, dataset: DatasetManifest, ref: SoftLabelRef,
            train: Batches, tracking_uri: str) -> tuple[Classifier, Distiller, torch.Tensor]:
    """(the student, the distiller that trains it, a CPU example batch [2, 3, H, W]), checked."""
    teacher = None
    if cfg.teacher_mode() == "online":
        source = TeacherSource.of(ref.teacher_uri, cfg.teacher).reach(tracking_uri)
        teacher = source.load(dataset.mean, dataset.std)
    torch.manual_seed(cfg.train.seed)  # the student's initial weights depend on the seed alone
    student = Classifier(create_model(cfg.student.arch, dataset.num_classes), dataset.mean, dataset.std)
    example = train.example(2).cpu()  # float [2, 3, H, W]
    distiller = build_distiller(cfg.distill.method, student, teacher, cfg.distill.options)
    if distiller.teacher_layers() and is_compiled(teacher):
        # Hooks do not fire inside TorchScript or exported code: read the features of an eager copy.
        teacher = eager_twin(teacher, cfg.teacher.arch, dataset.num_classes, example, ref.teacher_uri)
        distiller = build_distiller(cfg.distill.method, student, teacher, cfg.distill.options)
    # Before the MLflow run starts: a layer that does not exist or cannot be connected fails here,
    # leaving no run behind (fit() calls it again; it builds what it builds once).
    distiller.to(ctx.device).prepare(train.example())
    return student, distiller, example


def _validation(student: Classifier, val: Batches, teacher_top1: torch.Tensor) -> Callable[[], dict[str, float]]:
    """The student's accuracy on ``val`` and its agreement with the teacher's top-1 there."""

    def validate() -> dict[str, float]:
        pred = predict(student, val).argmax(-1)
        return {"val_accuracy": accuracy(pred, val.labels.cpu()), "val_agreement": accuracy(pred, teacher_top1)}

    return validate


@dataclass(frozen=True)
class _EarlierAttempt:
    """The MLflow run a killed or lost attempt of this task left, if any: its epochs and model."""

    run_id: str | None = None
    logged_epochs: frozenset[int] = field(default_factory=frozenset)
    model_uri: str | None = None

    @classmethod
    def find(cls, exp: str, key: str) -> "_EarlierAttempt":
        from mlflow import MlflowClient

        run_id = _previous_run(exp, key)
        if not run_id:
            return cls()
        log.info("continuing MLflow run %s of an earlier attempt", run_id)
        client = MlflowClient()
        # An epoch logged before the kill and trained again after it (killed between its metrics and
        # its checkpoint) is not logged twice: MLflow keeps every point, so the history would repeat it.
        return cls(run_id, frozenset(m.step for m in client.get_metric_history(run_id, "lr")),
                   client.get_run(run_id).data.tags.get(Tag.MODEL_URI))


def _train_tracked(ctx: distributed.DistContext, cfg: Config, paths: DistillPaths, run: DistillRun, job: _Prepared,
                   tracking_uri: str) -> dict:
    """Rank 0: train inside the task's one MLflow run, then save and log the student."""
    import mlflow

    from kdflow.registry import tracking

    exp = tracking.experiment_id(cfg.registry.experiment, tracking_uri)
    # One MLflow run per task, whatever the retries: a retry continues the run its killed attempt left
    # RUNNING, or the run it finished when it was lost before the step returned. Without a checkpoint
    # location there is nothing to continue.
    key = digest_of(job.identity)
    earlier = _EarlierAttempt.find(exp, key) if job.ckpt_dir else _EarlierAttempt()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in earlier.logged_epochs:
            mlflow.log_metrics(metrics, step=epoch)

    with mlflow.start_run(run_id=earlier.run_id, experiment_id=None if earlier.run_id else exp,
                          run_name=run.run_name or f"{cfg.distill.method}-{cfg.student.arch}",
                          parent_run_id=None if earlier.run_id else run.parent_run_id or None,
                          tags=None if earlier.run_id or not job.ckpt_dir else {RESUME_TAG: key}) as mlflow_run:
        tracking.log_config(cfg)
        tracking.set_tags({**_tags(job.dataset, job.ref, cfg, run),
                           Tag.METHOD: cfg.distill.method,
                           Tag.STUDENT_ARCH: cfg.student.arch, Tag.DEVICE: str(ctx.device),
                           Tag.TEACHER_MODE: cfg.teacher_mode(),
                           Tag.VIEWS: job.ref.views, Tag.PROCESSES: ctx.world})
        final = fit(
            job.distiller, job.train, cfg.train,
            validate=job.validate,
            on_epoch=on_epoch,
            checkpoint_dir=job.ckpt_dir,
            checkpoint_identity=job.identity,
            resume_state=job.previous,  # read once, above: fit checks it again and loads it onto the device
            dist=ctx,
        )
        student = job.student.cpu().eval()
        student_uri = join(paths.out_dir, STUDENT_FILE)
        storage_for(student_uri).write_bytes(student_uri, save_checkpoint(student, cfg.student.arch,
                                                                          job.dataset.num_classes))
        # A retry of a step lost after logging its model (the weights are the same) reuses that model.
        model_uri = earlier.model_uri or tracking.log_model(student, tuple(job.example.shape[1:]))
        if job.ckpt_dir and not earlier.model_uri:
            tracking.set_tags({Tag.MODEL_URI: model_uri})
    return {"run_id": mlflow_run.info.run_id, "model_uri": model_uri, "final_metrics": final,
            "checkpoints": job.ckpt_dir or ""}
