"""Step 1c: should this run train at all? Not when nothing changed since the champion.

A schedule fires whether or not anything changed. When the dataset fingerprint (after cleaning), the
given teacher's digest and the config hash all equal those recorded on the model version holding
the registry's ``champion`` alias, training would reproduce the champion: the run stops after
preprocessing and says so. Any difference, or no champion yet, and the run trains.
"""

from __future__ import annotations

import logging

from kdflow.config import Config
from kdflow.lineage import Lineage, config_hash
from kdflow.logs import setup_logging

log = logging.getLogger(__name__)

CHAMPION = "champion"
UNCHANGED_PREFIX = "unchanged: "  # how the pipeline's output says a run stopped early (see run_local)


def decide_retraining(fingerprint: str, teacher_digest: str, config_yaml: str, tracking_uri: str | None,
                      skip_unchanged: bool) -> dict:
    """Returns {"retrain": bool, "reason": str}; the reason is logged either way."""
    setup_logging()
    decision = _decide(fingerprint, teacher_digest, Config.from_yaml(config_yaml), tracking_uri, skip_unchanged)
    log.info("%s: %s", "training" if decision["retrain"] else "stopping early", decision["reason"])
    return decision


def _decide(fingerprint: str, teacher_digest: str, cfg: Config, tracking_uri: str | None,
            skip_unchanged: bool) -> dict:
    if not skip_unchanged:
        return {"retrain": True, "reason": "skip_unchanged is off: the run always trains"}
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from kdflow import tracking

    uri = tracking.use_tracking(tracking_uri)
    name = cfg.registry.model_name
    try:
        version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(exc).lower():
            raise
        return {"retrain": True, "reason": f"{name} has no {CHAMPION} yet"}
    lineage = Lineage(fingerprint, teacher_digest, config_hash(cfg))
    changed = lineage.differences(version.tags)
    where = f"{name} version {version.version} (@{CHAMPION})"
    if changed:
        return {"retrain": True, "reason": f"inputs differ from {where}: " + "; ".join(changed)}
    return {"retrain": False,
            "reason": f"nothing changed since {where}: same dataset fingerprint {fingerprint[:12]}, teacher "
                      f"{teacher_digest[:12]} and config {lineage.config_hash[:12]}; training skipped"}


def unchanged_output(reason: str) -> str:
    """The pipeline's output for a run that stopped early (a trained run's output is its MLflow run id)."""
    setup_logging()
    log.info("run stopped after preprocessing: %s", reason)
    return UNCHANGED_PREFIX + reason
