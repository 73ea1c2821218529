"""Keep credentials out of everything kdflow writes: URIs are redacted before they are shown, and a
URI that carries a secret is refused before it can become a config value or a pipeline parameter.

Why refuse rather than strip: a URI given as ``tracking_uri``/``cache_uri``/``data_uri`` is copied
into the run config, logged as an MLflow param and compiled into the pipeline's parameters, all of
which anyone who can read the registry or the cluster can read. Credentials have their own channels
(environment variables locally, Kubernetes secrets on a cluster), which kdflow never records.
"""

from __future__ import annotations

import os
import re
from urllib.parse import SplitResult, parse_qsl, urlsplit

from kdflow.errors import ConfigError

MASK = "***"

# Schemes where any user-info is a credential: HTTP(S) and object stores take a bare token as the
# user name (``https://<token>@host``). A database URI's user name alone is not a secret (the
# password may come from the environment), so there only a password counts.
_TOKEN_USER_SCHEMES = frozenset({"http", "https", "s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss",
                                 "wasb", "wasbs", "ftp", "sftp", "hf", "databricks"})
# Query keys that carry a secret: presigned S3/GCS/Azure URLs (X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, Signature, sig, AWSAccessKeyId), ``?token=``, ``?access_token=``, api keys.
_SECRET_KEY_PARTS = ("token", "signature", "sig", "secret", "password", "passwd", "pwd", "credential",
                     "key", "auth", "session", "sas")

# Environment variables whose values are secrets kdflow (or MLflow, boto3, kfp) reads. A value this
# long appearing in a log line or an error message is masked (shorter ones, e.g. moto's "testing",
# are not secrets and masking them would garble ordinary words).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "KF_PIPELINES_TOKEN", "HF_TOKEN")
MIN_SECRET_LENGTH = 8
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")

CREDENTIALS_FIX = (
    "give credentials through their own channels, never inside a URI: locally set MLFLOW_TRACKING_USERNAME/"
    "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN for MLflow and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
    "for S3 in the environment; on a cluster name a Kubernetes secret in the platform file (secrets:) so the "
    "steps get them as environment variables; then pass the URI without user:password@ or a token query")


def _split(uri: str) -> SplitResult | None:
    try:
        return urlsplit(str(uri))
    except ValueError:  # e.g. an unbalanced "[" in the netloc: not a URI we can take apart
        return None


def _secret_key(key: str) -> bool:
    low = key.lower()
    return any(part in low for part in _SECRET_KEY_PARTS)


def has_credentials(uri: str | None) -> bool:
    """True when ``uri`` embeds a secret: a password in its user-info, any user-info on an HTTP or
    object-store URI (a bare token), or a query parameter that carries a token or a signature."""
    if not uri:
        return False
    parts = _split(uri)
    if parts is None:
        return "@" in str(uri)  # unparseable and may hold user-info: treat as secret
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo or parts.scheme.lower() in _TOKEN_USER_SCHEMES:
            return True
    query = parts.query
    return any(_secret_key(k) or not v for k, v in parse_qsl(query, keep_blank_values=True)) if query else False


def redact_uri(uri: str | None) -> str:
    """``uri`` safe to show: user-info becomes ``***@``, every query value ``***`` (keys stay, so the
    reader sees what was there) and the fragment ``***``. Anything else is unchanged."""
    if uri is None:
        return ""
    text = str(uri)
    parts = _split(text)
    if parts is None:
        return MASK if "@" in text or "?" in text else text
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(query, keep_blank_values=True)) or MASK
    fragment = MASK if parts.fragment else ""
    if netloc == parts.netloc and query == parts.query and fragment == parts.fragment:
        return text  # untouched: keep the caller's exact spelling (a local path, a plain URI)
    out = f"{parts.scheme}:" if parts.scheme else ""
    if netloc or parts.scheme in ("http", "https", "s3", "file") or text.startswith(f"{parts.scheme}://"):
        out += f"//{netloc}"
    out += parts.path
    if query:
        out += f"?{query}"
    if fragment:
        out += f"#{fragment}"
    return out


def refuse_credentials(uri: str | None, what: str) -> None:
    """Raise a ConfigError (showing the URI redacted) when ``uri``, given as ``what`` (e.g.
    "--tracking-uri"), embeds credentials."""
    if has_credentials(uri):
        raise ConfigError(f"{what} {redact_uri(uri)} embeds credentials, which kdflow would record in the run "
                          "config, MLflow params and the pipeline's parameters", CREDENTIALS_FIX)


def _leaky(uri: str) -> bool:
    parts = _split(uri)
    return has_credentials(uri) or parts is None or "@" in parts.netloc


def credential_uris(text: str) -> list[str]:
    """The URIs in free ``text`` (a YAML config, a parameter value) that embed credentials, redacted."""
    return [redact_uri(m) for m in _URI_IN_TEXT.findall(str(text)) if has_credentials(m)]


def secret_values() -> list[str]:
    """The secret values the environment holds now (read at call time), longest first."""
    values = {os.environ.get(name, "").strip() for name in SECRET_ENV}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with every URI that carries user-info or a credential redacted, and every secret value
    of the environment (``SECRET_ENV``) masked: for log lines and error messages."""
    text = str(text)
    if "://" in text:
        text = _URI_IN_TEXT.sub(lambda m: redact_uri(m[0]) if _leaky(m[0]) else m[0], text)
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def refuse_run_inputs(cfg, data=None, teacher=None, cache_uri=None, tracking_uri=None) -> None:
    """Refuse the inputs of a local run (the flags, the values of the config ``cfg`` and
    $MLFLOW_TRACKING_URI, which becomes its tracking_uri when neither gives one) when one embeds
    credentials: each would be copied into the run config, its pipeline parameters and MLflow params."""
    for flag, given, key in (("--data", data, "data_uri"), ("--teacher", teacher, "teacher_uri"),
                             ("--cache-uri", cache_uri, "cache_uri"), ("--tracking-uri", tracking_uri, "tracking_uri")):
        refuse_credentials(given, flag)
        refuse_credentials(getattr(cfg, key), f"the config's {key}")
    if not (tracking_uri or cfg.tracking_uri):
        refuse_credentials(os.environ.get("MLFLOW_TRACKING_URI"), "$MLFLOW_TRACKING_URI")


def refuse_secrets_in(text: str, what: str) -> None:
    """Raise a ConfigError when ``text`` (a parameter value, a compiled spec) holds a URI with
    credentials or a secret value of the environment; the message names neither."""
    found = credential_uris(text)
    if found or any(secret in text for secret in secret_values()):
        held = f"a URI with credentials ({found[0]})" if found else "a secret value of this environment"
        raise ConfigError(f"{what} would hold {held}, readable by anyone who can see it", CREDENTIALS_FIX)
