from typing import NamedTuple

from kfp import dsl

from kdflow.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def distill(
    dataset: dsl.Input[dsl.Dataset],
    soft_labels: dsl.Input[dsl.Artifact],
    config: str,
    tracking_uri: str,
    pipeline_run: str,
    model: dsl.Output[dsl.Model],
    parent_run_id: str = "",
    run_name: str = "",
    teacher_digest: str = "",
    pipeline_run_id: str = "",
) -> NamedTuple("DistillOutputs", run_id=str, model_uri=str):
    """Train the student from the cached soft labels; the run and the model go to MLflow.

    ``parent_run_id`` makes the run a child of that MLflow run (a sweep's trials); ``run_name``
    names it (default ``<method>-<student arch>``); ``teacher_digest`` is the given teacher's, tagged
    for the champion check; ``pipeline_run_id`` (the run's unique id) with ``pipeline_run`` scopes
    the checkpoints a retry of this task resumes from."""
    from collections import namedtuple

    from kdflow.steps.distill import run_distillation

    result = run_distillation(dataset.path, soft_labels.path, config, model.path, tracking_uri, pipeline_run,
                              parent_run_id=parent_run_id, run_name=run_name, teacher_input_digest=teacher_digest,
                              pipeline_run_id=pipeline_run_id)
    model.metadata.update({"run_id": result["run_id"], "model_uri": result["model_uri"]})
    return namedtuple("DistillOutputs", ["run_id", "model_uri"])(result["run_id"], result["model_uri"])
