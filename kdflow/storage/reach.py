"""Pre-flight checks: is the S3 endpoint or the MLflow tracking store there at all?

Without them an unreachable service costs minutes of client retries and timeouts (MLflow's HTTP
client retries for about two minutes by default) before an error that names neither the service nor
the fix. Each check is one quick request with short timeouts; it fails only when nothing answers
(connection refused, a timeout, a name that does not resolve) or a local store cannot be written.
Any answer at all, even 403 or a 5xx, counts as reachable: the real request then says what is wrong
or retries (only a missing S3 bucket is reported here, it is as final as a dead endpoint). Errors
name the URI redacted (kdflow.util.redact: no user-info, no query values: where passwords and tokens go).

S3 is checked by kdflow.storage.s3 before its first request to a bucket (once per process, endpoint
and bucket), so every step that touches S3 gets it without calling it; MLflow by
kdflow.registry.tracking.use_tracking, which every step that talks to MLflow calls first.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kdflow.util.errors import KdflowError, StorageError
from kdflow.util.redact import redact_uri

# One pre-flight request: a healthy service answers in milliseconds; these bound how long a dead
# one takes to report (at most ATTEMPTS x (connect + read) plus a short backoff).
CONNECT_TIMEOUT_S = 3.0
READ_TIMEOUT_S = 5.0
# Two attempts: one dropped packet or a single 503 must not fail a step.
ATTEMPTS = 2
# Default ports of the database-backed MLflow stores, checked with a TCP connect.
_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}

_CHECKED: set[str] = set()  # tracking URIs found reachable in this process
_LOCK = threading.Lock()


def check_s3(bucket: str, uri: str, settings=None) -> None:
    """A HeadBucket on ``bucket`` (of ``uri``) through the endpoint the environment names, with
    short timeouts; StorageError when the endpoint does not answer, the bucket does not exist or
    there are no credentials. ``settings`` (kdflow.storage.s3.S3Settings) may only shorten the
    timeouts (the fault tests set a short read timeout)."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError, NoCredentialsError

    connect = min(CONNECT_TIMEOUT_S, settings.connect_timeout) if settings else CONNECT_TIMEOUT_S
    read = min(READ_TIMEOUT_S, settings.read_timeout) if settings else READ_TIMEOUT_S
    from kdflow.storage.s3client import new_client

    client = new_client(connect_timeout=connect, read_timeout=read,  # total_max_attempts: the first try included
                        retries={"mode": "standard", "total_max_attempts": ATTEMPTS})
    endpoint = redact_uri(client.meta.endpoint_url)
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise StorageError(f"no S3 credentials to reach {uri}",
                           "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO)") from None
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if status == 404 or code in ("NoSuchBucket", "404", "NotFound"):
            raise StorageError(f"S3 bucket of {uri} does not exist", "create the bucket or fix the URI") from None
        # 403 (no s3:ListBucket, yet objects may be readable), 301 (another region), 5xx: S3 is
        # there; the real request reports or retries.
    except (ConnectionError, HTTPClientError) as exc:  # refused, reset, timed out, name not resolved
        raise StorageError(
            f"cannot reach S3 at {endpoint} for {uri}: {type(exc).__name__} after {ATTEMPTS} attempts "
            f"({connect:g} s connect, {read:g} s read timeout)",
            "check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3), the network, and that the S3 service is up",
        ) from None
    except BotoCoreError as exc:  # e.g. ParamValidationError: an invalid bucket name
        raise StorageError(f"cannot use {uri}: {exc}", "check the URI and the AWS_* settings") from None
    finally:
        client.close()


def check_tracking(uri: str) -> None:
    """Raise a KdflowError naming ``uri`` (redacted) when its MLflow store cannot be reached or
    written: an http(s) server that does not answer, a database port that refuses connections, a
    sqlite or file store whose folder cannot be created or written. Other schemes (databricks, ...)
    are left to MLflow. A URI found reachable is not checked again in this process."""
    if uri in _CHECKED:
        return
    scheme = urlsplit(uri).scheme.lower()
    base = scheme.split("+")[0]  # postgresql+psycopg2 -> postgresql
    if uri.split(":")[0] in ("databricks", "databricks-uc"):
        base = "databricks"  # a profile name, not a path (MLflow resolves it)
    if base in ("http", "https"):
        _check_http(uri)
    elif base == "sqlite":
        path = uri.split(":///", 1)[1].split("?")[0] if ":///" in uri else ""
        if path and path != ":memory:":
            _check_writable(Path(path).parent, uri, Path(path))
    elif base == "file" or (not scheme and base != "databricks"):
        _check_writable(Path(urlsplit(uri).path if scheme else uri), uri)  # MLflow's file store
    elif base in _DB_PORTS:
        parts = urlsplit(uri)
        _check_tcp(parts.hostname or "localhost", parts.port or _DB_PORTS[base], uri)
    with _LOCK:
        _CHECKED.add(uri)


def _unreachable(uri: str, why: str) -> KdflowError:
    return KdflowError(f"cannot reach the MLflow tracking store at {redact_uri(uri)}: {why}",
                       "start the tracking server (or database), or fix --tracking-uri / the tracking_uri parameter "
                       "/ $MLFLOW_TRACKING_URI; check the network between here and it")


def _check_http(uri: str) -> None:
    import ssl
    import urllib.error
    import urllib.request

    parts = urlsplit(uri)
    # user-info is not a URL urllib accepts, and MLflow takes credentials from its own variables.
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    why = ""
    for _ in range(ATTEMPTS):
        try:
            with urllib.request.urlopen(health, timeout=READ_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return  # it answered (401 behind auth, 404 without /health): reachable
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                return  # TLS with a private CA (MLflow has its own settings for it): it answered
            why = f"{type(exc.reason).__name__}: {exc.reason}" if isinstance(exc.reason, OSError) else str(exc.reason)
        except (TimeoutError, socket.timeout):
            why = f"no answer within {READ_TIMEOUT_S:g} s"
        except (ConnectionError, OSError) as exc:  # reset or closed without an answer
            why = f"{type(exc).__name__}: {exc}"
    raise _unreachable(uri, why)


def _check_tcp(host: str, port: int, uri: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as exc:
        raise _unreachable(uri, f"{type(exc).__name__}: {exc}") from None


def _check_writable(folder: Path, uri: str, file: Path | None = None) -> None:
    if file is not None and file.exists() and not os.access(file, os.W_OK):
        raise KdflowError(f"the MLflow store {redact_uri(uri)} cannot be written: {file} is read-only",
                          "point the tracking URI at a database file this process can write, or fix its permissions")
    folder = folder if folder.is_absolute() else Path.cwd() / folder
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the folder is created by MLflow if its nearest parent lets it
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise KdflowError(f"the MLflow store {redact_uri(uri)} cannot be written: {existing} is not a writable folder",
                          "point the tracking URI at a folder this process can write, or fix its permissions")
