from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(run_id: str, model_uri: str, config: str, tracking_uri: str) -> str:
    """Register the passing student in the MLflow registry with the configured alias; returns its version."""
    from kdflow.steps.register import run_registration

    return run_registration(run_id, model_uri, config, tracking_uri)["version"]
