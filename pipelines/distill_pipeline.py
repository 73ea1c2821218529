"""fingerprint inputs -> preprocess -> [stop if nothing changed since the champion] -> [teacher adaptation]
-> teacher inference -> student distillation -> evaluation -> registration.

KFP's step cache (on a cluster; kfp.local caches nothing unless asked) is on only where a hit is true
by construction: preprocess is keyed by the raw folder's content digest, teacher adaptation and
inference by the dataset artifact (from a cached preprocess) and the given teacher's digest. Steps
that read the registry or write MLflow runs never cache: a hit would skip their side effects.
"""

from kfp import dsl

from kdflow.components.adapt_teacher import adapt_teacher
from kdflow.components.check_champion import check_champion
from kdflow.components.distill import distill
from kdflow.components.evaluate import evaluate
from kdflow.components.fingerprint_inputs import fingerprint_inputs
from kdflow.components.preprocess import preprocess
from kdflow.components.register import register
from kdflow.components.stop_unchanged import stop_unchanged
from kdflow.components.teacher_inference import teacher_inference
from kdflow.pipelines.kubernetes import cpu_step, gpu_step
from kdflow.platform import Platform

PIPELINE_NAME = "kdflow-distill"


def make_distill_pipeline(platform: Platform | None = None):
    """The distill pipeline; ``platform``: the Kubernetes settings of its tasks (None for kfp.local)."""

    def cpu(task, cache: bool = True):
        return cpu_step(task, platform).set_caching_options(cache)

    def gpu(task, cache: bool = True):
        return gpu_step(task, platform).set_caching_options(cache)

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
        prep = cpu(preprocess(data_uri=data_uri, config=config,
                              source_fingerprint=inputs.outputs["source_fingerprint"])).set_display_name("preprocess")
        check = cpu(check_champion(fingerprint=prep.outputs["Output"], teacher_digest=teacher_digest, config=config,
                                   tracking_uri=tracking_uri, skip_unchanged=skip_unchanged),
                    cache=False).set_display_name("check-champion")
        with dsl.If(check.outputs["retrain"] == True, name="inputs-changed"):  # noqa: E712 (a KFP condition)
            adapt = gpu(adapt_teacher(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                                      cache_uri=cache_uri, teacher_digest=teacher_digest,
                                      tracking_uri=tracking_uri)
                        ).set_display_name("teacher-adaptation")
            labels = gpu(teacher_inference(dataset=prep.outputs["dataset"], teacher_uri=adapt.output, config=config,
                                           cache_uri=cache_uri, teacher_digest=teacher_digest,
                                           tracking_uri=tracking_uri)
                         ).set_display_name("teacher-inference")
            train = gpu(distill(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                                config=config, tracking_uri=tracking_uri,
                                pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
                                teacher_digest=teacher_digest), cache=False).set_display_name("student-distillation")
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
