from typing import List

from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess_plan(data_uri: str, config: str) -> List[int]:
    """Plan the fanned-out preprocess: the part indices [0, n) for a dsl.ParallelFor of
    preprocess_part, one part per ``data.files_per_part`` files of the listed folder."""
    from kdflow.steps.preprocess import run_plan_preprocess

    return run_plan_preprocess(data_uri, config)
