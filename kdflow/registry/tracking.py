"""MLflow: where runs go, what they record, and how the student model is logged.

The tracking URI is an argument (from the CLI or a pipeline parameter) and falls back to the
``MLFLOW_TRACKING_URI`` environment variable, read when a step runs, never at import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kdflow.config import Config
from kdflow.util.errors import KdflowError
from kdflow.config.base import flatten

if TYPE_CHECKING:
    import torch

MODEL_ARTIFACT = "model"




def use_tracking(tracking_uri: str | None) -> str:
    """Point MLflow at ``tracking_uri`` (or $MLFLOW_TRACKING_URI), process-wide, for tracking and the
    registry; returns the URI in use (``resolve_tracking``)."""
    import mlflow

    uri = resolve_tracking(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # kdflow's registry is the tracking server's, whatever was set before
    return uri


def resolve_tracking(tracking_uri: str | None) -> str:
    """The tracking URI to use, ``tracking_uri`` or $MLFLOW_TRACKING_URI, checked: no credentials in the
    parameter (those in the variable move to MLflow's own variables), and a server that answers. MLflow
    itself is not pointed anywhere: callers pass the URI on (``use_tracking`` sets it process-wide)."""
    from kdflow.util.redact import refuse_credentials

    # The argument is a pipeline parameter or flag, recorded in the spec and the run: no credentials.
    # $MLFLOW_TRACKING_URI may hold them (a cluster puts it in a Kubernetes secret); it is only read.
    refuse_credentials(tracking_uri, "the tracking_uri parameter")
    uri = _without_credentials(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    # MLflow prints "View run ... at: <tracking URI>/#/..." to stdout when a run ends: not in pod logs.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if not uri:
        raise KdflowError("no MLflow tracking URI given",
                          "pass --tracking-uri / the tracking_uri parameter, or set MLFLOW_TRACKING_URI")
    from kdflow.storage.reach import check_tracking
    check_tracking(uri)  # unreachable: a clear error in seconds naming the URI, not minutes of retries
    return uri


def _without_credentials(uri: str) -> str:
    """``uri`` with user-info moved out of it, into MLFLOW_TRACKING_USERNAME/PASSWORD (when those are not
    set already). A cluster may give $MLFLOW_TRACKING_URI with credentials from a Kubernetes secret;
    MLflow quotes its tracking URI whole in errors and messages, so it gets a clean one, and sends the
    credentials as HTTP basic auth from the variables, as it would have from the URI."""
    from urllib.parse import unquote

    from kdflow.util.redact import split_userinfo

    parts = split_userinfo(uri) if uri.lower().startswith(("http://", "https://")) else None
    if parts is None:
        return uri
    lead, userinfo, rest = parts
    user, _, password = userinfo.partition(":")
    os.environ.setdefault("MLFLOW_TRACKING_USERNAME", unquote(user))
    if password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", unquote(password))
    return lead + rest


def experiment_id(name: str, tracking_uri: str) -> str:
    """Get or create the experiment. With a SQLite store, artifacts go beside the database file
    (MLflow's own default is a folder relative to whatever the working directory happens to be)."""
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        location = (Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another step: use that one
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def log_config(cfg: Config) -> None:
    """The run config as MLflow params and as ``config.yaml``, its locations redacted: the entry
    points refuse a URI with credentials, and this keeps one that got past them out of the record
    (what is computed does not depend on the locations: kdflow.registry.lineage)."""
    import mlflow

    from kdflow.registry.lineage import LOCATIONS
    from kdflow.util.redact import redact_text, redact_uri

    cfg = cfg.replace(**{key: redact_uri(getattr(cfg, key)) for key in LOCATIONS if getattr(cfg, key)})
    params = {k: ("null" if v is None else redact_text(str(v))) for k, v in flatten(cfg.to_dict()).items()}
    mlflow.log_params(params)
    mlflow.log_text(redact_text(cfg.to_yaml()), "config.yaml")


def synthetic_example(channels: int, height: int, width: int) -> torch.Tensor:
    """Two [0, 1] images of the right shape that are no one's data: a horizontal and a vertical
    ramp. MLflow stores a model's input example beside it, readable by anyone who can read the
    registry, so a training image must never be one (a privacy leak of the training set)."""
    import torch  # here, not at the top: the steps that only track or register never load torch

    ramp_x = torch.linspace(0, 1, width).expand(channels, height, width)
    ramp_y = torch.linspace(0, 1, height).unsqueeze(1).expand(channels, height, width)
    return torch.stack([ramp_x, ramp_y]).contiguous()


def log_model(model: torch.nn.Module, image_shape: tuple[int, int, int]) -> str:
    """Log ``model`` (a Classifier taking [0, 1] pixels [B, C, H, W]) with its signature; returns its
    model URI. ``image_shape`` is (C, H, W); the input example is synthetic (``synthetic_example``).

    MLflow stores it as a ``torch.export`` program (pt2): self-contained, loadable without kdflow and
    without unpickling code. The batch dimension is dynamic because the example has two rows.
    """
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    from kdflow.models.classifier import INPUT_METADATA_KEY, INPUT_PIXELS_01

    example = synthetic_example(*image_shape)
    model = model.cpu().eval()
    with torch.no_grad():
        output = model(example.cpu()).numpy()
    signature = infer_signature(example.cpu().numpy().astype(np.float32), output)
    info = mlflow.pytorch.log_model(
        model,
        name=MODEL_ARTIFACT,
        signature=signature,
        input_example=example.cpu().numpy().astype(np.float32),
        metadata={INPUT_METADATA_KEY: INPUT_PIXELS_01},
        # Stated, not inferred: inference imports the model in a fresh interpreter (seconds) and
        # records local wheel labels such as "+cpu" that no index serves.
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
    )
    return info.model_uri


def set_tags(tags: dict[str, Any]) -> None:
    """Set run tags, with any URI or text in them redacted (kdflow.util.redact.redact_text): a tag such as
    TEACHER_URI must not record a token or a password."""
    import mlflow

    from kdflow.util.redact import redact_text

    mlflow.set_tags({k: redact_text(str(v)) for k, v in tags.items()})
