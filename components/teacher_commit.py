from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def teacher_commit(
    dataset: dsl.Input[dsl.Dataset],
    teacher_uri: str,
    config: str,
    cache_uri: str,
    soft_labels: dsl.Output[dsl.Artifact],
    teacher_digest: str = "",
    tracking_uri: str = "",
) -> bool:
    """After every part: verify every view shard and commit the soft-label cache entry (fails naming
    the missing shards when a part did not finish: rerun); returns True on a cache hit."""
    from kdflow.steps.teacher_fanout import run_teacher_commit

    ref = run_teacher_commit(dataset.path, teacher_uri, config, cache_uri, soft_labels.path, teacher_digest,
                             tracking_uri)
    soft_labels.metadata.update({"cache_key": ref.cache_key, "cache_hit": ref.cache_hit,
                                 "teacher_digest": ref.teacher_digest, "teacher_input_digest": teacher_digest})
    return ref.cache_hit
