from typing import List

from kfp import dsl

from kdflow.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def teacher_plan(
    dataset: dsl.Input[dsl.Dataset],
    teacher_uri: str,
    config: str,
    cache_uri: str,
    teacher_digest: str = "",
    tracking_uri: str = "",
) -> List[dict]:
    """Plan the fanned-out teacher inference: check the teacher and its test-split floor, then return
    one loop item per part with shards to label ({part, parts, teacher_uri, teacher_digest}; part 0
    alone on a cache hit). ``teacher_digest`` (the given teacher's, before adaptation) keys KFP's
    cache and is checked; an MLflow teacher is read through ``tracking_uri``."""
    from kdflow.steps.teacher_fanout import run_teacher_plan

    return run_teacher_plan(dataset.path, teacher_uri, config, cache_uri, teacher_digest, tracking_uri)
