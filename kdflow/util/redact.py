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
from urllib.parse import unquote_plus

from kdflow.util.errors import ConfigError

MASK = "***"

# Schemes where any user-info is a credential: HTTP(S) and object stores take a bare token as the
# user name (``https://<token>@host``). A database URI's user name alone is not a secret (the
# password may come from the environment), so there only a password counts.
_TOKEN_USER_SCHEMES = frozenset({"http", "https", "s3", "s3a", "s3n", "gs", "gcs", "az", "abfs", "abfss",
                                 "wasb", "wasbs", "ftp", "sftp", "hf", "databricks"})
# Query keys that carry a secret, matched on whole words of the key (split at -, _, . and camelCase)
# so that innocent keys (design, keyspace, author, tokenizer, libpq's sslkey=/path) are not taken for
# one: presigned S3/GCS URLs (X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, Signature),
# Azure SAS (sig), ``?token=``, ``?access_token=``, passwords, api keys; ``auth`` only as the whole key
# (Firebase's ``?auth=``), not in auth_method.
_SECRET_KEY_WORDS = frozenset({"token", "signature", "sig", "secret", "password", "passwd", "pwd", "credential",
                               "credentials", "apikey", "accesstoken", "sessiontoken", "sslpassword", "pass",
                               "jwt"})
# "key" is a secret only on its own (Google's ``?key=``) or after one of these (api_key, access-key,
# secretKey); AWSAccessKeyId is not (an access key id is not a secret by AWS's definition).
_KEY_QUALIFIERS = frozenset({"api", "access", "secret", "private", "subscription", "account", "sas", "auth"})
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# Environment variables whose values are secrets kdflow (or MLflow, boto3, kfp) reads. A value this
# long appearing in a log line or an error message is masked (shorter ones, e.g. moto's "testing",
# are not secrets and masking them would garble ordinary words).
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
              "KF_PIPELINES_TOKEN", "HF_TOKEN")
MIN_SECRET_LENGTH = 8
# Any other variable whose name says it holds a secret (a Kubernetes secret may be mapped to any
# name in the platform file): DB_PASSWORD, CLIENT_SECRET, GITHUB_TOKEN, MINIO_ROOT_PASSWORD,
# STORAGE_KEY. Names that only point at one (..._FILE, ..._PATH, ..._URL, ..._NAME, ..._ID: a path, a
# secret's name, AWS_ACCESS_KEY_ID) are not, and neither are PWD/OLDPWD (the working directory) or
# TOKENIZERS_PARALLELISM: TOKEN must be a word of the name.
_SECRET_NAME_PARTS = ("PASSWORD", "PASSWD", "SECRET", "CONNECTION_STRING")  # Azure's hold an AccountKey
_SECRET_NAME_WORDS = frozenset({"TOKEN"})
_SECRET_NAME_LAST = frozenset({"KEY", "CREDENTIALS"})
_POINTER_NAME_LAST = frozenset({"FILE", "PATH", "DIR", "URL", "URI", "NAME", "ID", "REF"})

_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
_AUTHORITY = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//")  # "scheme://" or a bare "//"

CREDENTIALS_FIX = (
    "give credentials through their own channels, never inside a URI: locally set MLFLOW_TRACKING_USERNAME/"
    "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN for MLflow and AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
    "for S3 in the environment; on a cluster name a Kubernetes secret in the platform file (secrets:) so the "
    "steps get them as environment variables; then pass the URI without user:password@ or a token query")


def _userinfo(text: str) -> tuple[str, str, str] | None:
    """(``scheme://``, user-info, the rest after its ``@``) of ``text``, or None when it has none.

    Read on the raw text, not with urlsplit: its netloc ends at the first ``/``, ``?`` or ``#``, but
    passwords hold them unencoded (AWS secret keys contain ``/``; SQLAlchemy takes ``#`` and ``/``),
    which would hide the ``@`` and leave the password in the "path". So: when the text before the
    first ``:`` after ``//`` is a user name (no ``/``, ``?``, ``#``) and an ``@`` follows it, everything
    up to the LAST ``@`` is user-info with a password (a password may hold ``@`` too: masking more is
    the safe side). A ``:`` after a ``/`` is in the path (``s3://bucket/dir:x/file@2x.png``: no user).
    Otherwise the user-info is what precedes an ``@`` within the authority (``token@host``).

    The text alone cannot tell ``http://host:5000/a@b`` (a port, an ``@`` in the path) from
    ``http://user:5000/a@b`` (a password "5000/a"); it is taken for user-info, the safe reading for a
    secret (an ``@`` in a path can be written %40). An IPv6 host (``[::1]:5000``) is never a user."""
    start = _AUTHORITY.match(text)
    if start is None:
        return None
    lead, rest = text[:start.end()], text[start.end():]
    colon = rest.find(":")
    if colon >= 0 and not re.search(r"[/?#\[]", rest[:colon]) and "@" in rest[colon:]:
        at = rest.rfind("@")
    else:
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        at = authority.rfind("@")
        if at < 0:
            return None
    return lead, rest[:at], rest[at + 1:]


def split_userinfo(uri: str) -> tuple[str, str, str] | None:
    """(``scheme://``, user-info, the rest after its ``@``) of ``uri``, or None: ``_userinfo``'s reading."""
    return _userinfo(uri)


def _secret_key(key: str) -> bool:
    words = [w.lower() for w in _WORD.findall(unquote_plus(key))]
    if any(w in _SECRET_KEY_WORDS for w in words) or "".join(words) in _SECRET_KEY_WORDS | {"auth"}:
        return True
    return bool(words) and words[-1] == "key" and (len(words) == 1 or words[-2] in _KEY_QUALIFIERS)


def _secret_query(query: str) -> bool:
    """A query item ``key=value`` whose key names a secret and whose value is not blank (``?token=``
    holds nothing to leak)."""
    for item in re.split(r"[&;]", query):
        key, eq, value = item.partition("=")
        if eq and value.strip() and _secret_key(key):
            return True
    return False


def _query(body: str) -> str:
    # As urlsplit reads it: the fragment starts at the first "#", the query at the first "?" before it.
    return body.partition("#")[0].partition("?")[2]


def has_credentials(uri: str | None) -> bool:
    """True when ``uri`` embeds a secret: a password in its user-info, any user-info on an HTTP or
    object-store URI (a bare token), or a query parameter that carries a token or a signature."""
    if not uri:
        return False
    text = str(uri)
    info = _userinfo(text)
    if info is not None:
        lead, userinfo, text = info
        if ":" in userinfo or lead.split(":", 1)[0].lower() in _TOKEN_USER_SCHEMES:
            return True
    return _secret_query(_query(text))


def _mask_query(query: str) -> str:
    # Keys stay (the reader sees what was there); an item without "=" may itself be a token: masked whole.
    return "&".join(f"{key}={MASK}" if eq else MASK for key, eq, _ in (i.partition("=") for i in query.split("&")))


def redact_uri(uri: str | None) -> str:
    """``uri`` safe to show: user-info becomes ``***@``, every query value ``***`` (keys stay, so the
    reader sees what was there) and the fragment ``***``. Anything else is unchanged."""
    if uri is None:
        return ""
    text = str(uri)
    info = _userinfo(text)
    lead, body = ("", text) if info is None else (f"{info[0]}{MASK}@", info[2])
    body, hashed, fragment = body.partition("#")
    body, asked, query = body.partition("?")
    if info is None and not query and not fragment:
        return text  # untouched: keep the caller's exact spelling (a local path, a plain URI)
    return lead + body + asked + (_mask_query(query) if query else "") + hashed + (MASK if fragment else "")


def without_userinfo(uri: str | None) -> str:
    """``uri`` for a fix to show as the one to pass instead: ``redact_uri``'s reading with the user-info
    dropped rather than masked (query values stay masked)."""
    return redact_uri(uri).replace(f"//{MASK}@", "//", 1)


def refuse_credentials(uri: str | None, what: str) -> None:
    """Raise a ConfigError (showing the URI redacted) when ``uri``, given as ``what`` (e.g.
    "--tracking-uri"), embeds credentials."""
    if has_credentials(uri):
        raise ConfigError(f"{what} {redact_uri(uri)} embeds credentials, which kdflow would record in the run "
                          "config, MLflow params and the pipeline's parameters", CREDENTIALS_FIX)


def _leaky(uri: str) -> bool:
    # Also a user name alone (a database's): not refused, but nobody else's business in a log.
    return has_credentials(uri) or _userinfo(uri) is not None


def credential_uris(text: str) -> list[str]:
    """The URIs in free ``text`` (a YAML config, a parameter value) that embed credentials, redacted."""
    return [redact_uri(m) for m in _URI_IN_TEXT.findall(str(text)) if has_credentials(m)]


def secret_name(name: str) -> bool:
    """True when the environment variable ``name`` holds a secret: one of ``SECRET_ENV`` or a name
    that says so (see ``_SECRET_NAME_PARTS``)."""
    upper = name.upper()
    if upper in SECRET_ENV:
        return True
    words = [w for w in re.split(r"[^A-Z0-9]+", upper) if w]
    if not words or words[-1] in _POINTER_NAME_LAST:
        return False
    return (any(part in upper for part in _SECRET_NAME_PARTS) or words[-1] in _SECRET_NAME_LAST
            or any(w in _SECRET_NAME_WORDS for w in words))


def secret_values(named_only: bool = False) -> list[str]:
    """The secret values the environment holds now (read at call time), longest first. ``named_only``:
    only those of ``SECRET_ENV`` (what refusals check: a spec is not refused because it happens to
    hold the value of some POSTGRES_PASSWORD=postgres; masking in logs takes every secret-looking name)."""
    values = {value.strip() for name, value in os.environ.items()
              if (name.upper() in SECRET_ENV if named_only else secret_name(name))}
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact_text(text: str) -> str:
    """``text`` with every URI that carries user-info or a credential redacted, and every secret value
    of the environment (``secret_values``) masked: for log lines and error messages."""
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
    if found or any(secret in text for secret in secret_values(named_only=True)):
        held = f"a URI with credentials ({found[0]})" if found else "a secret value of this environment"
        raise ConfigError(f"{what} would hold {held}, readable by anyone who can see it", CREDENTIALS_FIX)
