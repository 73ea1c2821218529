"""Step 5: register a passing student in the MLflow model registry and give it the alias."""

from __future__ import annotations

from kdflow.config import Config
from kdflow.logs import setup_logging
from kdflow.tracking import Tag
from kdflow.errors import KdflowError



def run_registration(run_id: str, model_uri: str, config_yaml: str, tracking_uri: str | None) -> dict:
    """Register ``model_uri`` only if the run's gate passed; refuse otherwise (no version is made)."""
    import mlflow
    from mlflow import MlflowClient

    from kdflow import tracking

    setup_logging()
    cfg = Config.from_yaml(config_yaml)
    tracking.use_tracking(tracking_uri)
    client = MlflowClient()
    run = client.get_run(run_id)
    if run.data.tags.get(Tag.GATE_PASSED) != "true":
        raise KdflowError(
            f"run {run_id} did not pass the evaluation gate ({run.data.tags.get(Tag.GATE, 'not evaluated')})",
            "only a student that passes evaluation is registered",
        )
    tags = {k: run.data.tags[k] for k in Tag.LINEAGE if k in run.data.tags}
    tags[Tag.RUN_ID] = run_id
    version = mlflow.register_model(model_uri, cfg.registry.model_name, tags=tags)
    client.set_registered_model_alias(cfg.registry.model_name, cfg.registry.alias, version.version)
    with mlflow.start_run(run_id=run_id):
        tracking.set_tags({Tag.REGISTERED_MODEL: cfg.registry.model_name,
                           Tag.REGISTERED_VERSION: version.version})
    return {"name": cfg.registry.model_name, "version": str(version.version), "alias": cfg.registry.alias}
