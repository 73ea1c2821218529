"""Resolving a run's inputs: a CLI flag wins over the config file, which wins over the embedded default.

Defaults live under a work folder (``--workdir``, else $KDFLOW_HOME, else ``./.kdflow``): the digits
written as an image folder, a bootstrapped teacher, the soft-label cache and the MLflow SQLite store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from kdflow.config import Config
from kdflow.util.errors import KdflowError

log = logging.getLogger(__name__)


def _is_uri(value: str) -> bool:
    """A scheme-qualified URI (s3://, file://) or an MLflow model URI (models:/, runs:/), not a path."""
    return "://" in value or value.startswith(("models:/", "runs:/"))


def _absolute(value: str) -> str:
    """URIs unchanged; paths made absolute (pipeline steps run in other working folders)."""
    return value if _is_uri(value) else str(Path(value).resolve())


def default_workdir() -> Path:
    return Path(os.environ.get("KDFLOW_HOME") or ".kdflow").resolve()


def resolve_inputs(
    cfg: Config,
    workdir: Path,
    data: str | None = None,
    teacher: str | None = None,
    cache_uri: str | None = None,
    tracking_uri: str | None = None,
) -> tuple[Config, dict]:
    """Fill every input of ``cfg``; returns (resolved config, notes on what was defaulted)."""
    from kdflow.data.digits import write_digits
    from kdflow.training.bootstrap import bootstrap_teacher

    notes: dict = {}
    data = data or cfg.data_uri
    if not data:
        data = str(write_digits(workdir / "data" / "digits"))
        notes["data"] = "scikit-learn digits (embedded default)"
    elif not _is_uri(data) and not Path(data).is_dir():
        raise KdflowError(f"data folder {data} does not exist",
                          "pass DATA=/path/to/folder laid out as <class>/<image> (or train/<class>/<image>)")
    teacher = teacher or cfg.teacher_uri
    if not teacher:
        teacher, made = bootstrap_teacher(data, cfg, str(workdir / "teachers"))
        notes["teacher"] = f"bootstrapped {made.arch} ({'reused' if made.reused else 'trained now'})"
    elif not _is_uri(teacher) and not Path(teacher).is_file():
        raise KdflowError(f"teacher file {teacher} does not exist",
                          "pass a TorchScript file, a state_dict checkpoint or a models:/ URI")
    cache_uri = cache_uri or cfg.cache_uri or str(workdir / "cache")
    tracking_uri = (tracking_uri or cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                    or f"sqlite:///{workdir / 'mlflow.db'}")
    resolved = cfg.replace(data_uri=_absolute(data), teacher_uri=_absolute(teacher),
                           cache_uri=_absolute(cache_uri), tracking_uri=tracking_uri)
    return resolved, notes
