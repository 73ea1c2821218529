"""fingerprint inputs -> preprocess (fanned out) -> [stop if nothing changed since the champion] ->
[teacher adaptation] -> teacher inference (fanned out) -> student distillation -> evaluation -> registration.

On a cluster both heavy data steps fan out the Kubeflow way, a plan task, a ``dsl.ParallelFor`` of part
tasks, and a task after the loop that joins them (on one machine, kfp.local, each is one task: its own
process pool or GPU already does the work of all parts, and the result is the same, byte for byte):

* preprocess: ``preprocess_plan`` lists the folder and returns the part indices; each ``preprocess_part``
  decodes its chunk of the file list into a spool under ``cache_uri`` (object storage on a cluster, a
  folder every task reaches); ``preprocess_assemble`` de-duplicates, splits and writes the dataset. It is
  a pipeline of its own (``preprocess_fanout``) so that the parts get the folder's fingerprint as a
  pipeline input: inside a loop, kfp.local 2.17 replaces any upstream task's parameter output a task
  takes with the loop item (see components/start_sweep.py).
* teacher inference: ``teacher_plan`` checks the teacher (and its test-split floor) and returns one item
  per part with shards to label (part 0 alone on a hit: a loop is never empty); each ``teacher_part``
  (a GPU task) labels its range of dataset shards into the soft-label cache; ``teacher_commit`` runs
  after every part, verifies every shard and commits the entry, or fails naming what is missing (a
  rerun labels only that). The items carry the teacher's URI and digest, for the same kfp.local reason.

KFP's step cache (on a cluster; kfp.local caches nothing unless asked) is on only where a hit is true
by construction: the preprocess assembly is keyed by the raw folder's content digest (the parts never
cache: each keeps a complete spool on its own, and a cached part's spool may have expired), teacher
adaptation by the dataset artifact and the given teacher's digest. The preprocess plan lists the folder
(a cached plan could miss new files), and the teacher inference tasks never cache: the soft-label cache
is keyed by content itself, so on a hit the plan finds it in one lookup and one part returns at once,
while a cached commit could hand on an entry deleted since (or never committed by this run's parts).
Steps that read the registry or write MLflow runs never cache: a hit would skip their side effects.
"""

from typing import Callable, NamedTuple

from kfp import dsl

from kdflow.components.adapt_teacher import adapt_teacher
from kdflow.components.check_champion import check_champion
from kdflow.components.distill import distill
from kdflow.components.distill_trainjob import distill_trainjob
from kdflow.components.evaluate import evaluate
from kdflow.components.fingerprint_inputs import fingerprint_inputs
from kdflow.components.preprocess import preprocess
from kdflow.components.preprocess_assemble import preprocess_assemble
from kdflow.components.preprocess_part import preprocess_part
from kdflow.components.preprocess_plan import preprocess_plan
from kdflow.components.register import register
from kdflow.components.stop_unchanged import stop_unchanged
from kdflow.components.teacher_commit import teacher_commit
from kdflow.components.teacher_inference import teacher_inference
from kdflow.components.teacher_part import teacher_part
from kdflow.components.teacher_plan import teacher_plan
from kdflow.pipelines.kubernetes import cpu_step, gpu_step
from kdflow.config.platform import Platform

PIPELINE_NAME = "kdflow-distill"
# Part tasks at once. On a cluster each is a pod (a GPU one for the teacher): these bound what one run
# claims from a shared pool. On one machine (kfp.local) the one-task steps run instead (see below).
CLUSTER_TEACHER_PARTS, CLUSTER_PREPROCESS_PARTS = 8, 16

Step = Callable[..., dsl.PipelineTask]


def make_preprocess_fanout(cpu: Step, parallelism: int):
    """The fanned-out preprocess as a pipeline used as a step: (dataset artifact, fingerprint)."""

    class Outputs(NamedTuple):
        dataset: dsl.Dataset
        fingerprint: str

    @dsl.pipeline(name="preprocess-fanout", description="Decode the image folder in parts, then assemble.")
    def preprocess_fanout(data_uri: str, config: str, work: str, source_fingerprint: str) -> Outputs:
        plan = cpu(preprocess_plan(data_uri=data_uri, config=config), cache=False).set_display_name("preprocess-plan")
        with dsl.ParallelFor(plan.output, parallelism=parallelism) as part:
            # Never from KFP's cache: a part keeps a complete spool itself (a check, no decoding), and a
            # cached part whose spool has since expired would leave the assembly failing on every rerun.
            decoded = cpu(preprocess_part(data_uri=data_uri, config=config, part=part, parts=0, work=work,
                                          source_fingerprint=source_fingerprint),
                          cache=False).set_display_name("preprocess-part")
        assemble = cpu(preprocess_assemble(data_uri=data_uri, config=config, parts=0, work=work,
                                           source_fingerprint=source_fingerprint)
                       ).after(decoded).set_display_name("preprocess-assemble")
        return Outputs(dataset=assemble.outputs["dataset"], fingerprint=assemble.outputs["Output"])

    return preprocess_fanout


def teacher_fanout(cpu: Step, gpu: Step, parallelism: int, dataset, teacher_uri, config, cache_uri, teacher_digest,
                   tracking_uri) -> dsl.PipelineTask:
    """plan -> ParallelFor of GPU part tasks -> commit, inside the calling pipeline; returns the commit
    task (its ``soft_labels`` artifact and hit flag, like the one-task teacher_inference component)."""
    plan = gpu(teacher_plan(dataset=dataset, teacher_uri=teacher_uri, config=config, cache_uri=cache_uri,
                            teacher_digest=teacher_digest, tracking_uri=tracking_uri),
               cache=False).set_display_name("teacher-plan")
    with dsl.ParallelFor(plan.output, parallelism=parallelism) as item:
        part = gpu(teacher_part(dataset=dataset, teacher_uri=item.teacher_uri, config=config, cache_uri=cache_uri,
                                part=item.part, parts=item.parts, teacher_digest=item.teacher_digest,
                                tracking_uri=tracking_uri), cache=False).set_display_name("teacher-part")
    return cpu(teacher_commit(dataset=dataset, teacher_uri=teacher_uri, config=config, cache_uri=cache_uri,
                              teacher_digest=teacher_digest, tracking_uri=tracking_uri),
               cache=False).after(part).set_display_name("teacher-commit")


def preprocess_step(cpu: Step, fanout, data_uri, config, cache_uri, source_fingerprint):
    """(the preprocess task, its fingerprint output). ``fanout``: ``make_preprocess_fanout``'s pipeline
    (built outside the calling pipeline: KFP refuses to define one pipeline inside another), or None on
    one machine (kfp.local): one task there, whose own process pool already decodes on every core."""
    if fanout is None:
        prep = cpu(preprocess(data_uri=data_uri, config=config, source_fingerprint=source_fingerprint))
        return prep.set_display_name("preprocess"), prep.outputs["Output"]
    # (Caching is decided per task inside: a pipeline used as a step caches nothing itself.)
    prep = fanout(data_uri=data_uri, config=config, work=cache_uri, source_fingerprint=source_fingerprint)
    return prep.set_caching_options(False).set_display_name("preprocess"), prep.outputs["fingerprint"]


def teacher_step(cpu: Step, gpu: Step, local: bool, dataset, teacher_uri, config, cache_uri, teacher_digest,
                 tracking_uri) -> dsl.PipelineTask:
    """The task whose ``soft_labels`` artifact the later steps read: one task on one machine, the
    fan-out on a cluster (the cache entry is the same, byte for byte)."""
    if local:
        return gpu(teacher_inference(dataset=dataset, teacher_uri=teacher_uri, config=config, cache_uri=cache_uri,
                                     teacher_digest=teacher_digest, tracking_uri=tracking_uri),
                   cache=False).set_display_name("teacher-inference")
    return teacher_fanout(cpu, gpu, CLUSTER_TEACHER_PARTS, dataset, teacher_uri, config, cache_uri, teacher_digest,
                          tracking_uri)


def make_distill_pipeline(platform: Platform | None = None):
    """The distill pipeline; ``platform``: the Kubernetes settings of its tasks (None for kfp.local)."""

    def cpu(task, cache: bool = True):
        return cpu_step(task, platform).set_caching_options(cache)

    def gpu(task, cache: bool = True, gpus: int | None = None):
        return gpu_step(task, platform, gpus).set_caching_options(cache)

    local = platform is None
    fanout = None if local else make_preprocess_fanout(cpu, CLUSTER_PREPROCESS_PARTS)

    @dsl.pipeline(name=PIPELINE_NAME, description="Distil a teacher into a student; gate and register it.")
    def distill_pipeline(data_uri: str, teacher_uri: str, config: str, cache_uri: str, tracking_uri: str = "",
                         skip_unchanged: bool = False, auto_promote: bool = False) -> str:
        """Returns the MLflow run id of the student, or, when ``skip_unchanged`` is set and the data,
        teacher and config equal the registry champion's, "unchanged: <why>" (nothing trained).
        ``config`` is the resolved kdflow config as YAML; an empty ``tracking_uri`` means the steps'
        MLFLOW_TRACKING_URI environment variable. ``auto_promote``: a registered student becomes the
        registry's champion when the gate against the current champion passes."""
        inputs = cpu(fingerprint_inputs(data_uri=data_uri, teacher_uri=teacher_uri, config=config,
                                        tracking_uri=tracking_uri), cache=False).set_display_name("fingerprint-inputs")
        teacher_digest = inputs.outputs["teacher_digest"]
        prep, fingerprint = preprocess_step(cpu, fanout, data_uri, config, cache_uri,
                                            inputs.outputs["source_fingerprint"])
        check = cpu(check_champion(fingerprint=fingerprint, teacher_digest=teacher_digest,
                                   config=config, tracking_uri=tracking_uri, skip_unchanged=skip_unchanged),
                    cache=False).set_display_name("check-champion")
        with dsl.If(check.outputs["retrain"] == True, name="inputs-changed"):  # noqa: E712 (a KFP condition)
            adapt = gpu(adapt_teacher(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                                      cache_uri=cache_uri, teacher_digest=teacher_digest,
                                      tracking_uri=tracking_uri)
                        ).set_display_name("teacher-adaptation")
            labels = teacher_step(cpu, gpu, local, prep.outputs["dataset"], adapt.output, config, cache_uri,
                                  teacher_digest, tracking_uri)
            if platform is not None and platform.distill_nodes > 1:  # multi-node: a Trainer job, this pod waits
                train = cpu(distill_trainjob(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                                             config=config, tracking_uri=tracking_uri,
                                             pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                             num_nodes=platform.distill_nodes, gpus_per_node=platform.distill_gpus,
                                             platform=platform.to_yaml(), teacher_digest=teacher_digest,
                                             pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER),
                            cache=False).set_display_name("student-distillation")
            else:
                train = gpu(distill(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                                    config=config, tracking_uri=tracking_uri,
                                    pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                    pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
                                    teacher_digest=teacher_digest), cache=False,
                            gpus=platform.distill_gpus if platform else None).set_display_name("student-distillation")
            gate = cpu(evaluate(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                                model=train.outputs["model"], config=config, tracking_uri=tracking_uri,
                                run_id=train.outputs["run_id"]), cache=False).set_display_name("evaluation")
            with dsl.If(gate.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
                cpu(register(run_id=train.outputs["run_id"], model_uri=train.outputs["model_uri"], config=config,
                             tracking_uri=tracking_uri, auto_promote=auto_promote),
                    cache=False).set_display_name("registration")
        with dsl.Else(name="inputs-unchanged"):
            stop = cpu(stop_unchanged(reason=check.outputs["reason"]), cache=False).set_display_name("stop-unchanged")
        return dsl.OneOf(train.outputs["run_id"], stop.output)

    return distill_pipeline
