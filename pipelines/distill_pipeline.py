"""preprocess -> [teacher adaptation] -> teacher inference -> student distillation -> evaluation -> registration."""

from kfp import dsl

from components.adapt_teacher import adapt_teacher
from components.distill import distill
from components.evaluate import evaluate
from components.preprocess import preprocess
from components.register import register
from components.teacher_inference import teacher_inference

PIPELINE_NAME = "kdflow-distill"


@dsl.pipeline(name=PIPELINE_NAME, description="Distil a teacher into a student; gate and register it.")
def distill_pipeline(data_uri: str, teacher_uri: str, config: str, cache_uri: str, tracking_uri: str = "") -> str:
    """Returns the MLflow run id of the student. ``config`` is the resolved kdflow config as YAML;
    an empty ``tracking_uri`` means the step's MLFLOW_TRACKING_URI environment variable."""
    prep = preprocess(data_uri=data_uri, config=config).set_display_name("preprocess")
    adapt = adapt_teacher(dataset=prep.outputs["dataset"], teacher_uri=teacher_uri, config=config,
                          cache_uri=cache_uri).set_display_name("teacher-adaptation")
    labels = teacher_inference(dataset=prep.outputs["dataset"], teacher_uri=adapt.output, config=config,
                               cache_uri=cache_uri).set_display_name("teacher-inference")
    train = distill(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"], config=config,
                    tracking_uri=tracking_uri, pipeline_run=dsl.PIPELINE_JOB_NAME_PLACEHOLDER
                    ).set_display_name("student-distillation")
    for gpu_task in (adapt, labels, train):
        gpu_task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    check = evaluate(dataset=prep.outputs["dataset"], soft_labels=labels.outputs["soft_labels"],
                     model=train.outputs["model"], config=config, tracking_uri=tracking_uri,
                     run_id=train.outputs["run_id"]).set_display_name("evaluation")
    with dsl.If(check.outputs["Output"] == True, name="gate-passed"):  # noqa: E712 (a KFP condition)
        register(run_id=train.outputs["run_id"], model_uri=train.outputs["model_uri"], config=config,
                 tracking_uri=tracking_uri).set_display_name("registration")
    return train.outputs["run_id"]
