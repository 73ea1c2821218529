from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finish_sweep(sweep_id: str, pipeline_run: str, tracking_uri: str, status: dsl.PipelineTaskFinalStatus) -> None:
    """Exit handler: if the sweep failed, its MLflow parent run (and any trial left RUNNING) is marked FAILED."""
    from kdflow.steps.sweep import close_sweep

    close_sweep(sweep_id, tracking_uri, status.state, status.error_message, pipeline_run)
