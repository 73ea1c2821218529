from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register(run_id: str, model_uri: str, config: str, tracking_uri: str, auto_promote: bool = False) -> str:
    """Register the passing student in the MLflow registry with the configured alias; returns its version.
    With ``auto_promote`` it also becomes champion when the gate against the current champion passes."""
    from kdflow.steps.register import run_registration

    return run_registration(run_id, model_uri, config, tracking_uri, auto_promote)["version"]
