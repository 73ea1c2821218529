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

import torch

from kdflow import __version__
from kdflow.config import Config
from kdflow.digest import digest_of
from kdflow.logs import setup_logging
from kdflow.memory import bound_heap
from kdflow.data.shards import DatasetManifest
from kdflow.evaluation import accuracy
from kdflow.lineage import config_hash
from kdflow.distillers import build_distiller
from kdflow.errors import CacheError
from kdflow.models import Classifier, create_model
from kdflow.models.features import eager_twin, is_compiled
from kdflow.models.loading import TeacherSource, save_checkpoint
from kdflow.softlabels.cache import SoftLabelCache
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.tracking import Tag
from kdflow.storage import join, storage_for
from kdflow.training.streaming import make_batches, shard_soft_labels
from kdflow.training import checkpoints, distributed, launch
from kdflow.training.device import resolve_device
from kdflow.training.trainer import fit, predict

log = logging.getLogger(__name__)

STUDENT_FILE = "student.pt"
# On the step's MLflow run, from its creation: a retry finds the run its killed attempt started by this
# tag (set in the same call that creates the run, so no kill can leave a run without it).
RESUME_TAG = "kdflow.resume_key"


def _tags(dataset: DatasetManifest, ref: SoftLabelRef, pipeline_run: str, cfg: Config,
          teacher_input_digest: str) -> dict[str, str]:
    tags = {
        Tag.DATASET_FINGERPRINT: dataset.fingerprint,
        Tag.CONFIG_HASH: config_hash(cfg),
        Tag.CODE_VERSION: __version__,
        Tag.TEACHER_DIGEST: ref.teacher_digest,
        Tag.TEACHER_URI: ref.teacher_uri,
        Tag.CACHE_KEY: ref.cache_key,
        Tag.CACHE_HIT: str(ref.cache_hit).lower(),
        Tag.PIPELINE_RUN: pipeline_run,
    }
    # The teacher as given decides the champion check; without adaptation it labelled the data itself.
    if teacher_input_digest or cfg.teacher.adapt_epochs == 0:
        tags[Tag.TEACHER_INPUT_DIGEST] = teacher_input_digest or ref.teacher_digest
    return tags


def run_identity(dataset: DatasetManifest, ref: SoftLabelRef, cfg: Config, pipeline_run: str, parent_run_id: str,
                 run_name: str, teacher_input_digest: str, world: int,
                 pipeline_run_id: str = "") -> dict[str, str | int]:
    """What one distillation is: equal on every retry of a pipeline run's task, different for anything
    that changes what it trains or where it reports. The whole config counts (not only the lineage's
    config hash): the resumed MLflow run holds the config as params, which MLflow cannot change. The
    number of processes counts too: DDP results depend on it, so another world size starts over.
    ``pipeline_run_id``: the run's unique id (KFP's ``pipeline_job_uuid``); the pipeline run's name is
    a display name, which two runs may share."""
    return {"pipeline_run": pipeline_run, "pipeline_run_id": pipeline_run_id,
            "dataset_fingerprint": dataset.fingerprint, "cache_key": ref.cache_key,
            "teacher_digest": ref.teacher_digest,
            "teacher_input_digest": teacher_input_digest, "config_hash": config_hash(cfg),
            "config": digest_of(cfg.to_dict()), "parent_run_id": parent_run_id, "run_name": run_name,
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
    setup_logging()
    bound_heap()  # memory that does not grow with the work done (kdflow.memory)
    cfg = Config.from_yaml(config_yaml)
    if cfg.train.processes > 1 and not distributed.is_torchrun_worker():
        # One task, N GPUs: the same call runs again in N torchrun workers; rank 0's result is the step's.
        launch.check_gpus(cfg.train.processes, resolve_device(cfg.train.device))
        return launch.distributed_call(cfg.train.processes, "kdflow.steps.distill:run_distillation", dict(
            dataset_dir=dataset_dir, softlabels_dir=softlabels_dir, config_yaml=config_yaml, out_dir=out_dir,
            tracking_uri=tracking_uri, pipeline_run=pipeline_run, parent_run_id=parent_run_id,
            run_name=run_name, teacher_input_digest=teacher_input_digest, pipeline_run_id=pipeline_run_id))
    ctx = distributed.init(resolve_device(cfg.train.device))
    try:
        return _distill(ctx, cfg, dataset_dir, softlabels_dir, out_dir, tracking_uri, pipeline_run, parent_run_id,
                        run_name, teacher_input_digest, pipeline_run_id)
    finally:
        distributed.destroy(ctx)


def _distill(ctx: distributed.DistContext, cfg: Config, dataset_dir: str, softlabels_dir: str, out_dir: str,
             tracking_uri: str | None, pipeline_run: str, parent_run_id: str, run_name: str,
             teacher_input_digest: str, pipeline_run_id: str) -> dict:
    """One process's part: every rank trains on its slice of each batch; rank 0 alone validates,
    logs to MLflow and writes the student (DDP keeps the weights equal on every rank)."""
    import mlflow

    from kdflow import tracking

    # First: an unreachable MLflow is a clear error in seconds, not after the data is loaded.
    tracking_uri = tracking.use_tracking(tracking_uri)  # also before a models:/ teacher is looked up
    dataset = DatasetManifest.open(dataset_dir)
    ref = SoftLabelRef.load(softlabels_dir)
    device = ctx.device
    if cfg.replays_cache() and ref.views != cfg.cached_views():
        raise CacheError(f"the soft labels hold {ref.views} augmented view(s) but this config replays "
                         f"{cfg.cached_views()}", "run teacher inference and distillation with the same config")

    cache = SoftLabelCache(ref.cache_uri)
    # Offline methods replay the cached views (or the plain view when the run does not augment),
    # loaded per dataset shard: with the split when it is resident, with each shard when streaming.
    soft_train = (shard_soft_labels(cache, ref.cache_key, "train", augmented=ref.views > 0)
                  if cfg.replays_cache() else None)
    identity = run_identity(dataset, ref, cfg, pipeline_run, parent_run_id, run_name, teacher_input_digest,
                            ctx.world, pipeline_run_id)
    # Shared by the ranks and by every retry of this task (object storage across nodes and pods).
    ckpt_dir = checkpoints.location(ref.cache_uri, identity) if pipeline_run else None
    if ckpt_dir is None and ctx.is_main:
        log.info("no pipeline run given: this run writes no checkpoints (a preempted call starts over)")
    resident = cfg.train.resident
    previous = checkpoints.read(ckpt_dir) if ctx.is_main else None
    if previous is not None:  # refused here, before an MLflow run is resumed, when it is not this run's
        checkpoints.check(ckpt_dir, previous, {"run": identity})
        log.info("resuming from the checkpoint in %s (%d epoch(s) done, %d step(s) into the next)", ckpt_dir,
                 previous["epoch"] + 1, previous.get("step", 0))
    # A resumed run keeps its data order: rank 0 reads the checkpoint, and its decision is every rank's.
    if resident == "auto" and previous is not None and previous.get("resident") is not None:
        resident = "always" if previous["resident"] else "never"
        log.info("resuming with the %s split the checkpoint was trained on",
                 "resident" if previous["resident"] else "streamed")
    train = make_batches(dataset, "train", cfg.train.batch_size, device, soft=soft_train,
                         augmentation=cfg.augment, resident=resident,
                         agree=lambda keep: distributed.broadcast_object(keep, ctx))
    val = (make_batches(dataset, "val", cfg.teacher.batch_size, device, resident=cfg.train.resident)
           if dataset.count("val") and ctx.is_main else None)
    # Validation agreement with the teacher is reported for every method, the baseline included
    # (the teacher's top-1 only: [N_val] ints).
    teacher_val_top1 = cache.load_split(ref.cache_key, "val", val.ids).top1() if val is not None else None
    teacher = None
    if cfg.teacher_mode() == "online":
        source = TeacherSource.of(ref.teacher_uri, cfg.teacher)
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
    distiller.to(device).prepare(train.example())

    def validate() -> dict[str, float]:
        pred = predict(student, val).argmax(-1)
        out = {"val_accuracy": accuracy(pred, val.labels.cpu())}
        if teacher_val_top1 is not None:
            out["val_agreement"] = accuracy(pred, teacher_val_top1)
        return out

    if not ctx.is_main:
        fit(distiller, train, cfg.train, checkpoint_dir=ckpt_dir, checkpoint_identity=identity, dist=ctx)
        return {}
    exp = tracking.experiment_id(cfg.registry.experiment, tracking_uri)
    # One MLflow run per task, whatever the retries: a retry continues the run its killed attempt left
    # RUNNING, or the run it finished when it was lost before the step returned. Without a checkpoint
    # location there is nothing to continue.
    key = digest_of(identity)
    resumed = _previous_run(exp, key) if ckpt_dir else None
    logged_epochs: set[int] = set()
    earlier_model = None
    if resumed:
        log.info("continuing MLflow run %s of an earlier attempt", resumed)
        client = mlflow.MlflowClient()
        # An epoch logged before the kill and trained again after it (killed between its metrics and
        # its checkpoint) is not logged twice: MLflow keeps every point, so the history would repeat it.
        logged_epochs = {m.step for m in client.get_metric_history(resumed, "lr")}
        earlier_model = client.get_run(resumed).data.tags.get(Tag.MODEL_URI)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch not in logged_epochs:
            mlflow.log_metrics(metrics, step=epoch)
    with mlflow.start_run(run_id=resumed, experiment_id=None if resumed else exp,
                          run_name=run_name or f"{cfg.distill.method}-{cfg.student.arch}",
                          parent_run_id=None if resumed else parent_run_id or None,
                          tags=None if resumed or not ckpt_dir else {RESUME_TAG: key}) as run:
        tracking.log_config(cfg)
        tracking.set_tags({**_tags(dataset, ref, pipeline_run, cfg, teacher_input_digest),
                           Tag.METHOD: cfg.distill.method,
                           Tag.STUDENT_ARCH: cfg.student.arch, Tag.DEVICE: str(device),
                           Tag.TEACHER_MODE: cfg.teacher_mode(),
                           Tag.VIEWS: ref.views, Tag.PROCESSES: ctx.world})
        final = fit(
            distiller, train, cfg.train,
            validate=validate if val is not None else None,
            on_epoch=on_epoch,
            checkpoint_dir=ckpt_dir,
            checkpoint_identity=identity,
            resume_state=previous,  # read once, above: fit checks it again and loads it onto the device
            dist=ctx,
        )
        student = student.cpu().eval()
        student_uri = join(out_dir, STUDENT_FILE)
        storage_for(student_uri).write_bytes(student_uri, save_checkpoint(student, cfg.student.arch,
                                                                          dataset.num_classes))
        # A retry of a step lost after logging its model (the weights are the same) reuses that model.
        model_uri = earlier_model or tracking.log_model(student, tuple(example.shape[1:]))
        if ckpt_dir and not earlier_model:
            tracking.set_tags({Tag.MODEL_URI: model_uri})
    return {"run_id": run.info.run_id, "model_uri": model_uri, "final_metrics": final, "checkpoints": ckpt_dir or ""}
