from typing import List

from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def start_sweep(dataset: dsl.Input[dsl.Dataset], config: str, trials: str, tracking_uri: str,
                pipeline_run: str, sweep_id: str) -> List[dict]:
    """Open the sweep's MLflow parent run; returns one item per trial for the loop: run_name, config,
    parent_run_id and pipeline_run.

    (One output carrying all of it: kfp.local 2.17 loops only over a task's default output, and inside
    a loop it replaces any other upstream task output a task takes with the loop item.)
    """
    from kdflow.steps.sweep import start_sweep as open_sweep

    return open_sweep(dataset.path, config, trials, tracking_uri, pipeline_run, sweep_id)["trials"]
