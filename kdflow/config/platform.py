"""Kubernetes settings of the compiled pipeline: where its pods run, what they get, where secrets come from.

These settings decide how a cluster schedules the pipeline, not what it computes, so they are a file of
their own (``kdflow compile/submit/schedule --platform FILE``), applied when the spec is compiled, and
not part of the run config (which is hashed, logged and compared with the champion's). Every field has
a default that fits a cluster with NVIDIA's GPU operator, so the file holds only what differs. Loaded
with the same strict typed loader as the run config: unknown keys and wrong types are errors.

Credentials never appear here, in the spec or in pipeline parameters: the file names Kubernetes secrets
and the environment variables their keys become in the pods (see docs/cluster.md).
"""

from __future__ import annotations

import re
from pydantic import Field, model_validator
from pathlib import Path
from typing import Any, Literal

import yaml

from kdflow.util.errors import ConfigError
from kdflow.config.base import Strict

# Kubernetes quantities: "500m", "2", "16Gi", "1.5G".
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
# Argo/KFP durations for retry back-off: "30s", "5m", "1h".
_DURATION = re.compile(r"^[0-9]+(s|m|h)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Kubernetes' own rules for a secret's name (a DNS subdomain) and for its keys. Checking them also
# catches a credential pasted where a name goes: the file and the compiled spec hold names only.
_SECRET_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


def _check(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise ConfigError(f"platform key '{key}' {problem}", fix)


def _quantity(value: str | None, key: str) -> None:
    _check(value is None or bool(_QUANTITY.match(value)), key, f"is {value!r}, not a Kubernetes quantity",
           'write e.g. "500m" or "4" for CPU, "16Gi" for memory')


class Resources(Strict):
    """Requests and limits of one class of step (null: left to the cluster's defaults)."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None

    def check(self, key: str) -> None:
        for name in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
            _quantity(getattr(self, name), f"{key}.{name}")


class Toleration(Strict):
    """A pod toleration (Kubernetes' own fields), so GPU pods may land on tainted GPU nodes."""

    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = "NoSchedule"


class SecretEnv(Strict):
    """Environment variables of every step taken from one Kubernetes secret: ``env`` maps each key of
    the secret to the variable it becomes. ``optional``: a key missing from the secret leaves the
    variable unset instead of failing the pod (e.g. an S3 endpoint, needed for MinIO but not for AWS)."""

    secret: str
    env: dict[str, Any] = Field(default_factory=dict)
    optional: bool = False


class Retry(Strict):
    """Retries of the steps that run on (preemptible) GPU nodes; back-off grows by ``factor`` per try."""

    attempts: int = 3  # retries after the first try; 0: none
    backoff: str = "60s"
    factor: float = 2.0
    max_backoff: str = "1h"


def _default_secrets() -> tuple[SecretEnv, ...]:
    s3 = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    s3_optional = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_DEFAULT_REGION")
    # The tracking URI may come from the run's tracking_uri parameter instead; a step with neither
    # says so and stops (kdflow.registry.tracking.use_tracking).
    mlflow_optional = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                       "MLFLOW_TRACKING_TOKEN")
    return (
        SecretEnv(secret="kdflow-s3", env={k: k for k in s3}),
        SecretEnv(secret="kdflow-s3", env={k: k for k in s3_optional}, optional=True),
        SecretEnv(secret="kdflow-mlflow", env={k: k for k in mlflow_optional}, optional=True),
    )


class Platform(Strict):
    """Kubernetes settings of the compiled pipeline."""

    # GPU steps (teacher adaptation and inference, distillation): the accelerator and how many.
    gpu_resource: str = "nvidia.com/gpu"
    gpus_per_step: int = 1
    # GPUs of the student-distillation task: with more than 1, set train.processes to the same number
    # and the step trains under torchrun, one DDP process per GPU (the step refuses a mismatch).
    distill_gpus: int = 1
    # Nodes of the student distillation: with more than 1 the distill pipeline submits it as a
    # Kubeflow Trainer job (TrainJob on the torch-distributed runtime) of distill_nodes x distill_gpus
    # processes and waits for it (kdflow.cluster.trainjob; docs/cluster.md). A sweep's trials stay on one node.
    distill_nodes: int = 1
    # Where GPU steps may run: the label NVIDIA's GPU feature discovery puts on GPU nodes, and the
    # taint GPU node pools usually carry (GKE, EKS and AKS taint them nvidia.com/gpu).
    gpu_node_selector: dict[str, Any] = Field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    gpu_tolerations: tuple[Toleration, ...] = (Toleration(key="nvidia.com/gpu"),)
    # PyTorch's DataLoader workers share batches through /dev/shm, 64 MiB by default in a pod:
    # a memory-backed volume of this size replaces it on the GPU steps.
    shm_size: str = "8Gi"
    gpu_steps: Resources = Resources(cpu_request="4", cpu_limit="8", memory_request="16Gi", memory_limit="32Gi")
    cpu_steps: Resources = Resources(cpu_request="1", cpu_limit="4", memory_request="4Gi", memory_limit="16Gi")
    secrets: tuple[SecretEnv, ...] = Field(default_factory=_default_secrets)
    image_pull_secrets: tuple[str, ...] = ()
    retry: Retry = Retry()

    @model_validator(mode="after")
    def _ranges(self) -> "Platform":
        _check(self.gpus_per_step >= 1, "gpus_per_step", f"is {self.gpus_per_step}", "use 1 or more")
        _check(self.distill_gpus >= 1, "distill_gpus", f"is {self.distill_gpus}", "use 1 or more")
        _check(self.distill_nodes >= 1, "distill_nodes", f"is {self.distill_nodes}", "use 1 or more")
        _quantity(self.shm_size, "shm_size")
        self.gpu_steps.check("gpu_steps")
        self.cpu_steps.check("cpu_steps")
        for k, v in self.gpu_node_selector.items():
            _check(isinstance(k, str) and isinstance(v, str), "gpu_node_selector",
                   f"has {k!r}: {v!r}", 'write labels as strings, e.g. "nvidia.com/gpu.present": "true"')
        secret_fix = ("name a Kubernetes secret (lower-case letters, digits, '-' and '.'; at most 253 characters) "
                      "and its keys, never a credential: create it with `kubectl create secret generic NAME "
                      "--from-literal=KEY=VALUE` (docs/cluster.md)")
        for i, s in enumerate(self.secrets):
            # Not repeated in the message: a value that fails these checks may be the credential itself.
            _check(isinstance(s.secret, str) and len(s.secret) <= 253 and bool(_SECRET_NAME.match(s.secret)),
                   f"secrets[{i}].secret", "is not a Kubernetes secret name", secret_fix)
            _check(bool(s.env), f"secrets[{i}].env", "is empty", "map at least one secret key to a variable")
            for key, var in s.env.items():
                _check(isinstance(key, str) and bool(_SECRET_KEY.match(key)) and len(key) <= 253,
                       f"secrets[{i}].env", "has a key that is not a Kubernetes secret key", secret_fix)
                _check(isinstance(var, str) and bool(_ENV_NAME.match(var)),
                       f"secrets[{i}].env", f"maps {key!r} to {var!r}", "map secret keys to variable names")
        for name in self.image_pull_secrets:
            _check(isinstance(name, str) and bool(_SECRET_NAME.match(name)), "image_pull_secrets",
                   "holds something that is not a Kubernetes secret name", secret_fix)
        r = self.retry
        _check(r.attempts >= 0, "retry.attempts", f"is {r.attempts}", "use 0 (no retries) or more")
        _check(r.factor >= 1, "retry.factor", f"is {r.factor}", "use a factor of 1 or more")
        for name in ("backoff", "max_backoff"):
            _check(bool(_DURATION.match(getattr(r, name))), f"retry.{name}", f"is {getattr(r, name)!r}",
                   'write a duration such as "60s", "5m" or "1h"')
        return self

    @classmethod
    def load(cls, path: str | Path | None) -> "Platform":
        """The settings in ``path`` over the defaults; the defaults alone when ``path`` is None."""
        if path is None:
            return cls()
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read platform file {path}: {exc}", "pass a readable YAML file") from exc
        return cls.from_dict(data or {})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
