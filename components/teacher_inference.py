from kfp import dsl

from kdflow.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def teacher_inference(
    dataset: dsl.Input[dsl.Dataset],
    teacher_uri: str,
    config: str,
    cache_uri: str,
    soft_labels: dsl.Output[dsl.Artifact],
    teacher_digest: str = "",
    tracking_uri: str = "",
) -> bool:
    """Cache the frozen teacher's soft labels under a content key; returns True on a cache hit.
    ``teacher_digest`` (the given teacher's, before adaptation) keys KFP's cache and is checked; an
    MLflow teacher is read through ``tracking_uri`` (empty: $MLFLOW_TRACKING_URI)."""
    from kdflow.steps.teacher import run_teacher_inference

    ref = run_teacher_inference(dataset.path, teacher_uri, config, cache_uri, soft_labels.path, teacher_digest,
                                tracking_uri)
    soft_labels.metadata.update({"cache_key": ref.cache_key, "cache_hit": ref.cache_hit,
                                 "teacher_digest": ref.teacher_digest, "teacher_input_digest": teacher_digest})
    return ref.cache_hit
