"""preprocess (fanned out) -> [teacher adaptation] -> teacher inference (once, fanned out) -> start sweep ->
trials in parallel (distillation, one per trial config) -> select the best on validation -> evaluation ->
registration. The fan-outs are distill_pipeline.py's."""

from kfp import dsl

from kdflow.components.adapt_teacher import adapt_teacher
from kdflow.components.distill import distill
from kdflow.components.evaluate import evaluate
from kdflow.components.finish_sweep import finish_sweep
from kdflow.components.fingerprint_inputs import fingerprint_inputs
from kdflow.components.register import register
from kdflow.components.select_trial import select_trial
from kdflow.components.start_sweep import start_sweep
from kdflow.pipelines.distill_pipeline import (CLUSTER_PREPROCESS_PARTS, make_preprocess_fanout, preprocess_step,
                                               teacher_step)
from kdflow.pipelines.kubernetes import cpu_step, gpu_step
from kdflow.config.platform import Platform

PIPELINE_NAME = "kdflow-sweep"
# How many trials train at once. On a cluster each trial is a pod with its own GPU: 8 bounds what one
# sweep claims from a shared pool. On one machine (kfp.local) trials would share its CPU cores or GPU:
# each training process already uses every core, so two at once only contend (and kfp.local runs at
# most 2 loop iterations at a time whatever is asked), hence 1 there.
CLUSTER_PARALLELISM = 8
LOCAL_PARALLELISM = 1


def make_sweep_pipeline(parallelism: int = CLUSTER_PARALLELISM, platform: Platform | None = None):
    """The sweep pipeline with ``parallelism`` trials at a time (fixed when the spec is built: KFP
    takes it as a number in the spec, not as a run parameter); ``platform``: the Kubernetes settings
    of its tasks (None for kfp.local). Only preprocess and teacher adaptation may hit KFP's cache (see
    distill_pipeline.py); the rest write MLflow runs."""

    def cpu(task, cache: bool = False):
        return cpu_step(task, platform).set_caching_options(cache)

    def gpu(task, cache: bool = False, gpus: int | None = None):
        return gpu_step(task, platform, gpus).set_caching_options(cache)

    def cached_cpu(task, cache: bool = True):  # preprocess: its assembly is content-keyed (parts never cache)
        return cpu(task, cache)

    local = platform is None
    fanout = None if local else make_preprocess_fanout(cached_cpu, CLUSTER_PREPROCESS_PARTS)

    @dsl.pipeline(name=PIPELINE_NAME, description="Distil many students from one teacher run; register the best.")
    def sweep_pipeline(data_uri: str, teacher_uri: str, config: str, trials: str, cache_uri: str,
                       tracking_uri: str = "", sweep_id: str = "", auto_promote: bool = False):
        """``config`` is the labelling config (the trial config the teacher labels with) as YAML;
        ``trials`` is the sweep plan as JSON (kdflow sweep writes both); an empty ``tracking_uri`` means
        the steps' MLFLOW_TRACKING_URI. ``sweep_id`` tags the MLflow parent run (empty: the pipeline
        run's name); the winner is its tag kdflow.sweep.best_run_id. ``auto_promote``: the registered
        winner becomes champion when it passes the gate against the current champion. Nothing is returned: KFP takes
        pipeline outputs only from outside the exit handler, and everything runs inside it."""
        # (The trials take no teacher digest: inside a loop kfp.local replaces other tasks' parameter
        # outputs with the loop item, see below; the labelling teacher's digest is tagged instead.)
        # A failed sweep must not leave its parent run looking in progress: the exit task closes it.
        # (It finds the parent by the sweep's id: an exit task takes no other task's output.)
        finish = cpu(finish_sweep(sweep_id=sweep_id, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                  tracking_uri=tracking_uri))
        finish.set_display_name("finish-sweep")
        with dsl.ExitHandler(finish, name="sweep"):
            inputs = cpu(fingerprint_inputs(data_uri=data_uri, teacher_uri=teacher_uri, config=config,
                                            tracking_uri=tracking_uri)).set_display_name("fingerprint-inputs")
            teacher_digest = inputs.outputs["teacher_digest"]
            prep, _ = preprocess_step(cached_cpu, fanout, data_uri, config, cache_uri,
                                      inputs.outputs["source_fingerprint"])
            adapt = gpu(adapt_teacher(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                                      cache_uri=cache_uri, teacher_digest=teacher_digest,
                                      tracking_uri=tracking_uri),
                        cache=True).set_display_name("teacher-adaptation")
            labels = teacher_step(cpu, gpu, local, prep.outputs["dataset"], adapt.output, config, cache_uri,
                                  teacher_digest, tracking_uri)
            # After the labels: a teacher that fails leaves no parent run behind.
            start = cpu(start_sweep(dataset=prep.outputs["dataset"], config=config, trials=trials,
                                    tracking_uri=tracking_uri, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                    sweep_id=sweep_id)).after(labels)
            start.set_display_name("start-sweep")
            # The trials take the parent run id and the pipeline run's name from start-sweep's items, not
            # as outputs or placeholders: see components/start_sweep.py (inside a loop kfp.local replaces
            # other task outputs with the loop item and names the job "<run>/for-loop-1-iteration-<i>").
            with dsl.ParallelFor(start.output, parallelism=parallelism) as trial:
                train = gpu(distill(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                                    config=trial.config, tracking_uri=tracking_uri, pipeline_run=trial.pipeline_run,
                                    parent_run_id=trial.parent_run_id, run_name=trial.run_name),
                            gpus=platform.distill_gpus if platform else None).set_display_name("trial")
            pick = cpu(select_trial(models=dsl.Collected(train.outputs["model"]),
                                    run_ids=dsl.Collected(train.outputs["run_id"]), sweep=start.output, trials=trials,
                                    tracking_uri=tracking_uri)).set_display_name("select-trial")
            check = cpu(evaluate(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                                 model=pick.outputs["best"], config=pick.outputs["config"], tracking_uri=tracking_uri,
                                 run_id=pick.outputs["run_id"])).set_display_name("evaluation")
            with dsl.If(check.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
                cpu(register(run_id=pick.outputs["run_id"], model_uri=pick.outputs["model_uri"],
                             config=pick.outputs["config"], tracking_uri=tracking_uri, auto_promote=auto_promote)
                    ).set_display_name("registration")

    return sweep_pipeline

