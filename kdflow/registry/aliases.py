"""Aliases of the registry's model versions: ``champion``, the one that serves, and how to look one up."""

from __future__ import annotations

CHAMPION = "champion"  # moved only by promotion and rollback (kdflow.registry.promotion), which keep its history


def by_alias(client, name: str, alias: str):
    """The model version holding ``alias``, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "not found" not in str(exc).lower():
            raise
        return None
