from typing import NamedTuple

from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def fingerprint_inputs(data_uri: str, teacher_uri: str, config: str, tracking_uri: str
                       ) -> NamedTuple("Inputs", source_fingerprint=str, teacher_digest=str, config_hash=str):
    """Content digests of the raw data folder, the given teacher and the config: the later steps take
    them as parameters so that KFP's cache keys on content, not on URIs. Never cached itself."""
    from collections import namedtuple

    from kdflow.steps.fingerprint import fingerprint_inputs as run

    out = run(data_uri, teacher_uri, config, tracking_uri)
    return namedtuple("Inputs", list(out))(**out)
