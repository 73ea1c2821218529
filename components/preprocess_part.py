from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess_part(data_uri: str, config: str, part: int, parts: int, work: str,
                    source_fingerprint: str = "") -> str:
    """Decode part ``part`` of ``parts`` of the image folder (``parts`` 0: the planned count, as
    preprocess_plan counts) into one spool file; returns its URI.

    ``work`` must be a folder every task can read and write: on a cluster an object-store prefix
    (the pipeline passes its ``cache_uri``), never a pod's local disk. Spools go to
    ``<work>/preprocess-spools/<source_fingerprint[:16]>/parts/``, so another version of the folder
    never meets them, and a complete spool already there is kept (a retry is cheap). They hold the
    decoded images and stay after the assemble task: give that prefix a lifecycle rule."""
    from kdflow.steps.preprocess import run_preprocess_part

    return run_preprocess_part(data_uri, config, work, part, parts, source_fingerprint)
