from kfp import dsl

from kdflow.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def adapt_teacher(dataset: dsl.Input[dsl.Dataset], teacher_uri: str, config: str, cache_uri: str,
                  teacher_digest: str = "", tracking_uri: str = "") -> str:
    """Fine-tune the teacher on the train split when teacher.adapt_epochs > 0; returns the teacher
    URI the later steps use (the given one when adaptation is off). ``teacher_digest``, the given
    teacher's content digest, keys KFP's cache and is checked against the teacher read; an MLflow
    teacher is read through ``tracking_uri`` (empty: $MLFLOW_TRACKING_URI)."""
    from kdflow.steps.adapt import run_adaptation

    return run_adaptation(dataset.path, teacher_uri, config, cache_uri, teacher_digest, tracking_uri)["teacher_uri"]
