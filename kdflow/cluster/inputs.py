"""A cluster run's inputs, checked before anything leaves this machine.

The run's pods read their data, teacher and cache from object storage and report to a tracking
server, so a path or a SQLite store on the submitting machine is refused with the fix, as are a URI
with a credential in it and images this project never published.
"""

from __future__ import annotations

import re

from kdflow.config import Config
from kdflow.util.errors import KdflowError
from kdflow.util.redact import has_credentials, redact_uri, without_userinfo

_S3 = re.compile(r"s3://[^/\s]+(/\S*)?")
_MLFLOW = re.compile(r"(models|runs):/\S+")  # resolved through the MLflow server (TeacherSource.is_mlflow)
_HTTP = re.compile(r"https?://\S+")


def _refuse_credentials(key: str, flag: str, uri: str) -> None:
    if not has_credentials(uri):
        return
    where = ("MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) in the `kdflow-mlflow`"
             if key == "tracking_uri" else "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the `kdflow-s3`")
    bare = without_userinfo(uri).split("?", 1)[0]  # without user-info or query: what to pass instead
    fix = f"put {where} Kubernetes secret (docs/cluster.md section 4) and pass {flag} {bare}"
    raise KdflowError(f"{key} {redact_uri(uri)} carries a user name or password (or a token): it would be a pipeline "
                      "parameter, readable by anyone who can see the run", fix)


def cluster_config(config_path: str | None, data: str | None, teacher: str | None, cache_uri: str | None,
                   tracking_uri: str | None) -> Config:
    """The run's config with the flags applied (a flag wins over the file), refused unless a pod on
    the cluster can reach every input it names, and when one of them carries a credential."""
    from kdflow.config import load_config

    # Generic defaults without a file: the embedded digits config brings its data from this machine.
    cfg = load_config(config_path, embedded=False)
    cfg = cfg.replace(data_uri=data or cfg.data_uri, teacher_uri=teacher or cfg.teacher_uri,
                      cache_uri=cache_uri or cfg.cache_uri, tracking_uri=tracking_uri or cfg.tracking_uri or "")
    for key, flag in (("data_uri", "--data"), ("teacher_uri", "--teacher"), ("cache_uri", "--cache-uri"),
                      ("tracking_uri", "--tracking-uri")):
        _refuse_credentials(key, flag, getattr(cfg, key) or "")
    upload = "upload it first (e.g. `aws s3 sync {path} s3://BUCKET/PREFIX`) and pass {flag} s3://BUCKET/PREFIX"
    for key, flag, value in (("data_uri", "--data", cfg.data_uri), ("cache_uri", "--cache-uri", cfg.cache_uri)):
        if not value:
            raise KdflowError(f"no {key}: a cluster run needs it in object storage",
                              f"pass {flag} s3://BUCKET/PREFIX, or set {key} in the config file")
        if not _S3.fullmatch(value):
            raise KdflowError(f"{key} {value} is not an s3:// URI: the pipeline's pods cannot read a path or "
                              "URI of this machine", upload.format(path=value, flag=flag))
    if not cfg.teacher_uri:
        raise KdflowError("no teacher_uri: a cluster run needs the teacher in object storage or MLflow",
                          "pass --teacher s3://BUCKET/teacher.pt, --teacher models:/NAME@ALIAS or "
                          "--teacher runs:/RUN_ID/PATH")
    if not (_S3.fullmatch(cfg.teacher_uri) or _MLFLOW.fullmatch(cfg.teacher_uri)):
        raise KdflowError(f"teacher_uri {cfg.teacher_uri} is not s3://, models:/ or runs:/: the pipeline's pods "
                          "cannot read a file of this machine",
                          f"upload it (`aws s3 cp {cfg.teacher_uri} s3://BUCKET/teacher.pt`) and pass --teacher "
                          "s3://BUCKET/teacher.pt, or log it to MLflow and pass models:/NAME@ALIAS or "
                          "runs:/RUN_ID/PATH")
    if cfg.tracking_uri and not _HTTP.fullmatch(cfg.tracking_uri):
        raise KdflowError(f"tracking_uri {cfg.tracking_uri} is not an http(s):// MLflow server: the pipeline's "
                          "pods cannot reach a store on this machine",
                          "pass --tracking-uri http://MLFLOW-SERVICE:5000, or leave it empty (--tracking-uri "
                          "unset and none in the config) so the steps read MLFLOW_TRACKING_URI from their "
                          "Kubernetes secret")
    from kdflow.distillers.preflight import check_models

    check_models(cfg)  # what needs the networks, before anything is compiled or sent
    return cfg
