"""Step 5: register a passing student in the MLflow model registry and give it the alias."""

from __future__ import annotations

import logging

from kdflow.steps.preamble import begin_step
from kdflow.registry.lock import registry_lock
from kdflow.registry.tags import Tag
from kdflow.util.errors import KdflowError

log = logging.getLogger(__name__)


def run_registration(run_id: str, model_uri: str, config_yaml: str, tracking_uri: str | None,
                     auto_promote: bool = False) -> dict:
    """Register ``model_uri`` only if the run's gate passed; refuse otherwise (no version is made).

    The version gets the run's lineage and verdict tags and the ``registry.alias``. With
    ``auto_promote`` it also becomes ``champion`` when the gate against the current champion, checked
    again now, passes (``kdflow promote`` without --force); otherwise the reason is recorded on it.
    """
    import mlflow
    from mlflow import MlflowClient

    from kdflow.registry import tracking

    cfg = begin_step(config_yaml, tracking_uri=tracking_uri)
    tracking.use_tracking(tracking_uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    if run.data.tags.get(Tag.GATE_PASSED) != "true":
        raise KdflowError(
            f"run {run_id} did not pass the evaluation gate ({run.data.tags.get(Tag.GATE, 'not evaluated')})",
            "only a student that passes evaluation is registered",
        )
    # Find-or-register and the alias under the model's registry lock: two registrations of one run
    # (a retried step beside the original, two pipelines) would otherwise both miss and both create
    # a version, and two of different runs could leave the alias on the older one.
    with registry_lock(client, cfg.registry.model_name):
        version = _registered_from(client, cfg.registry.model_name, run_id)
        if version is None:
            tags = {k: v for k, v in run.data.tags.items() if k in Tag.LINEAGE or k in Tag.VERDICT
                    or k.startswith((Tag.GATE_CHECK_PREFIX, Tag.EXPORT_PREFIX))}
            tags[Tag.RUN_ID] = run_id
            version = mlflow.register_model(model_uri, cfg.registry.model_name, tags=tags)
        client.set_registered_model_alias(cfg.registry.model_name, cfg.registry.alias, version.version)
    with mlflow.start_run(run_id=run_id):
        tracking.set_tags({Tag.REGISTERED_MODEL: cfg.registry.model_name,
                           Tag.REGISTERED_VERSION: version.version})
    result = {"name": cfg.registry.model_name, "version": str(version.version), "alias": cfg.registry.alias,
              "promoted": False}
    if auto_promote:
        from kdflow.registry.promotion import promote

        # After the lock above is released: promote takes it itself (the lock is not reentrant).
        outcome = promote(cfg.registry.model_name, str(version.version), tracking_uri, action="auto")
        log.info("auto-promote: %s", outcome.message)
        result["promoted"] = outcome.promoted
    return result


def _registered_from(client, name: str, run_id: str):
    """The version already registered from ``run_id``, if any: a retried registration step (a pod
    lost after MLflow answered) must not make a second version of the same student. Errors are not
    swallowed: a registry that fails to answer now must not be read as "not registered yet"."""
    versions = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
    found = [v for v in versions if v.tags.get(Tag.RUN_ID) == run_id]
    if found:
        log.info("run %s is already registered as %s version %s: not registering it again", run_id, name,
                 found[0].version)
    return found[0] if found else None
