"""Step 1c: should this run train at all? Not when nothing changed since the champion.

A schedule fires whether or not anything changed. When the dataset fingerprint (after cleaning), the
given teacher's digest and the config hash all equal those recorded on the model version holding
the registry's ``champion`` alias, training would reproduce the champion: the run stops after
preprocessing and says so. The same holds for the version holding the alias a passing student gets
(``registry.alias``, challenger by default) while it awaits promotion. Any difference, or no such
version, and the run trains.
"""

from __future__ import annotations

import logging

from kdflow.config import Config
from kdflow.registry.aliases import CHAMPION, by_alias
from kdflow.registry.lineage import Lineage, config_hash
from kdflow.steps.preamble import begin_step
from kdflow.util.logs import setup_logging

log = logging.getLogger(__name__)

UNCHANGED_PREFIX = "unchanged: "  # how the pipeline's output says a run stopped early (see run_local)


def decide_retraining(fingerprint: str, teacher_digest: str, config_yaml: str, tracking_uri: str | None,
                      skip_unchanged: bool) -> dict:
    """Returns {"retrain": bool, "reason": str}; the reason is logged either way."""
    cfg = begin_step(config_yaml, tracking_uri=tracking_uri)
    decision = _decide(fingerprint, teacher_digest, cfg, tracking_uri, skip_unchanged)
    log.info("%s: %s", "training" if decision["retrain"] else "stopping early", decision["reason"])
    return decision


def _decide(fingerprint: str, teacher_digest: str, cfg: Config, tracking_uri: str | None,
            skip_unchanged: bool) -> dict:
    if not skip_unchanged:
        return {"retrain": True, "reason": "skip_unchanged is off: the run always trains"}
    from mlflow import MlflowClient

    from kdflow.registry import tracking

    uri = tracking.use_tracking(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = cfg.registry.model_name
    lineage = Lineage(fingerprint, teacher_digest, config_hash(cfg))
    champion = by_alias(client, name, CHAMPION)
    if champion is None:
        reason = f"{name} has no {CHAMPION} yet"
    else:
        changed = lineage.differences(champion.tags)
        if not changed:
            return _skip(f"nothing changed since {name} version {champion.version} (@{CHAMPION})", lineage)
        reason = f"inputs differ from {name} version {champion.version} (@{CHAMPION}): " + "; ".join(changed)
    # A student registered from these very inputs and not promoted yet (the alias registration gives,
    # challenger by default) would be trained again by every scheduled run until someone promotes it.
    pending = by_alias(client, name, cfg.registry.alias) if cfg.registry.alias != CHAMPION else None
    if pending is not None and not lineage.differences(pending.tags):
        return _skip(f"{reason}, but {name} version {pending.version} (@{cfg.registry.alias}) was trained from "
                     f"these inputs and awaits promotion", lineage)
    return {"retrain": True, "reason": reason}


def _skip(why: str, lineage: Lineage) -> dict:
    return {"retrain": False,
            "reason": f"{why}: same dataset fingerprint {lineage.dataset_fingerprint[:12]}, teacher "
                      f"{lineage.teacher_digest[:12]} and config {lineage.config_hash[:12]}; training skipped"}


def unchanged_output(reason: str) -> str:
    """The pipeline's output for a run that stopped early (a trained run's output is its MLflow run id)."""
    setup_logging()
    log.info("run stopped after preprocessing: %s", reason)
    return UNCHANGED_PREFIX + reason
