from typing import NamedTuple

from kfp import dsl

from kdflow.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def check_champion(fingerprint: str, teacher_digest: str, config: str, tracking_uri: str, skip_unchanged: bool
                   ) -> NamedTuple("Decision", retrain=bool, reason=str):
    """Train only if something changed since the registry's champion (or skip_unchanged is off)."""
    from collections import namedtuple

    from kdflow.steps.champion import decide_retraining

    out = decide_retraining(fingerprint, teacher_digest, config, tracking_uri, skip_unchanged)
    return namedtuple("Decision", ["retrain", "reason"])(out["retrain"], out["reason"])
