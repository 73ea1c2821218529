from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def stop_unchanged(reason: str) -> str:
    """The pipeline's output when nothing changed since the champion: why the run stopped early."""
    from kdflow.steps.champion import unchanged_output

    return unchanged_output(reason)
