from kfp import dsl

from kdflow.components.images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def teacher_part(
    dataset: dsl.Input[dsl.Dataset],
    teacher_uri: str,
    config: str,
    cache_uri: str,
    part: int,
    parts: int,
    teacher_digest: str = "",
    tracking_uri: str = "",
) -> int:
    """Label one part of the teacher inference (a range of dataset shards) into the soft-label cache;
    returns how many view shards it labelled. Takes its item's fields from teacher_plan's loop item:
    ``teacher_digest`` is the teacher's digest the plan saw, checked."""
    from kdflow.steps.teacher_fanout import run_teacher_part

    stats = run_teacher_part(dataset.path, teacher_uri, config, cache_uri, part, parts, teacher_digest, tracking_uri)
    return stats["shards_labelled"]
