from typing import NamedTuple

from kfp import dsl

from components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def distill(
    dataset: dsl.Input[dsl.Dataset],
    soft_labels: dsl.Input[dsl.Artifact],
    config: str,
    tracking_uri: str,
    pipeline_run: str,
    model: dsl.Output[dsl.Model],
) -> NamedTuple("DistillOutputs", run_id=str, model_uri=str):
    """Train the student from the cached soft labels; the run and the model go to MLflow."""
    from collections import namedtuple

    from kdflow.steps.distill import run_distillation

    result = run_distillation(dataset.path, soft_labels.path, config, model.path, tracking_uri, pipeline_run)
    model.metadata.update({"run_id": result["run_id"], "model_uri": result["model_uri"]})
    return namedtuple("DistillOutputs", ["run_id", "model_uri"])(result["run_id"], result["model_uri"])
