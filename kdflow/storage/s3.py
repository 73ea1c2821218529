"""The S3 backend of kdflow.storage, with retries for what S3 does now and then.

S3 (and MinIO, Ceph, ...) answers a small share of requests with 503 SlowDown or 500, drops
connections, stalls, and cuts responses mid-body. Two layers retry, each with exponential backoff
and jitter and a bounded number of attempts:

* botocore's "standard" retry mode retries a request that fails before its response is complete:
  5xx, throttling, connection errors and timeouts (including non-streaming bodies such as a
  listing page, which botocore reads whole);
* ``S3Storage._run`` retries what botocore cannot: an object body that breaks mid-read (it is
  streamed after botocore has returned), a body shorter than its Content-Length, a 409
  ConditionalRequestConflict (a concurrent conditional write in flight), and a listing that fails
  after its first page (it is listed again from the start).

Errors that retrying cannot fix (403, 404, a missing bucket) are not retried. When the attempts
run out the error is a StorageError naming the URI and the fix. The client is made at first use,
so the endpoint, credentials and settings come from the environment at run time.
"""

from __future__ import annotations

import http.client
import threading
import time
from typing import Callable
from urllib.parse import urlparse

from kdflow.storage.base import ObjectInfo, Storage, register_scheme
from kdflow.storage.s3client import ENV_ATTEMPTS, S3Settings, backoff_s, new_client
from kdflow.util.errors import StorageError

# Error codes worth retrying (besides any 5xx status); 429 is throttling too.
_THROTTLING = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
               "TooManyRequestsException", "RequestTimeout", "RequestTimeoutException"}

class _Retryable(Exception):
    """A failure botocore did not retry but another attempt can fix; ``why`` in words."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class _Exists(Exception):
    """A conditional create found an object at the key (412 PreconditionFailed)."""


def _code(exc) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _transient(exc) -> bool:
    """A ClientError that another attempt may not meet (5xx, throttling)."""
    return _status(exc) >= 500 or _status(exc) == 429 or _code(exc) in _THROTTLING


# Reachability is checked once per process, endpoint and bucket (kdflow.storage.reach), before the first
# request: a missing endpoint is then a clear error in seconds rather than every retry's timeout.
_REACHED: set[tuple[str, str]] = set()
_REACH_LOCK = threading.Lock()


@register_scheme("s3")
class S3Storage(Storage):
    # ListObjectsV2 page size (S3's maximum); the fault tests lower it so a listing is many pages.
    page_size = 1000

    def __init__(self) -> None:
        self._client = None
        self._settings: S3Settings | None = None

    @property
    def settings(self) -> S3Settings:
        if self._settings is None:
            self._settings = S3Settings.from_env()
        return self._settings

    @property
    def client(self):
        if self._client is None:
            s = self.settings
            self._client = new_client(
                # Preprocess fetches images from several threads; botocore's default pool of 10
                # connections would make the rest wait and reconnect.
                max_pool_connections=32,
                connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
                # total_max_attempts counts the first try; botocore's "max_attempts" here would
                # mean retries, one more attempt than said.
                retries={"mode": "standard", "total_max_attempts": s.attempts})
        return self._client

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        u = urlparse(uri)
        if not u.netloc:
            raise StorageError(f"S3 URI '{uri}' names no bucket", "write it as s3://BUCKET/KEY")
        return u.netloc, u.path.lstrip("/")

    def _endpoint(self) -> str:
        from kdflow.util.redact import redact_uri

        return redact_uri(self.client.meta.endpoint_url)

    def _reach(self, bucket: str, uri: str) -> None:
        key = (self.client.meta.endpoint_url, bucket)
        if key in _REACHED:
            return
        with _REACH_LOCK:  # one check, not one per preprocess thread
            if key not in _REACHED:
                from kdflow.storage.reach import check_s3

                check_s3(bucket, uri, self.settings)
                _REACHED.add(key)

    def _run(self, what: str, uri: str, fn: Callable):
        """``fn()`` (boto3 calls), retried on ``_Retryable`` failures; other failures become a
        StorageError that says what to fix (FileNotFoundError for a missing key, _Exists for 412)."""
        from botocore.exceptions import BotoCoreError, ClientError

        self._reach(self._split(uri)[0], uri)
        attempts = self.settings.attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except _Retryable as exc:
                last = exc.why
            except ClientError as exc:
                if _code(exc) != "ConditionalRequestConflict":
                    raise self._error(what, uri, exc) from exc
                last = "409 ConditionalRequestConflict (a concurrent conditional write was in flight)"
            except BotoCoreError as exc:
                raise self._error(what, uri, exc) from exc
            if attempt < attempts:
                time.sleep(backoff_s(attempt))
        raise StorageError(f"S3 kept failing to {what} {uri} after {attempts} attempts: {last}",
                           self._retry_fix())

    def _retry_fix(self) -> str:
        return (f"the S3 service at {self._endpoint()} is overloaded or failing: run the step again later, "
                f"or allow more attempts (${ENV_ATTEMPTS}, now {self.settings.attempts})")

    def _error(self, what: str, uri: str, exc: Exception) -> Exception:
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return StorageError(f"no S3 credentials to {what} {uri}",
                                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO)")
        if isinstance(exc, (ConnectionError, HTTPClientError)):  # refused, closed, timed out: after botocore's attempts
            return StorageError(f"cannot reach S3 at {self._endpoint()} to {what} {uri} "
                                f"({self.settings.attempts} attempts): {type(exc).__name__}",
                                "check AWS_ENDPOINT_URL, the network and that the S3 service is up")
        if not isinstance(exc, ClientError):  # e.g. ParamValidationError: an invalid bucket name
            return StorageError(f"cannot {what} {uri}: {exc}", "check the URI and the AWS_* settings")
        code = _code(exc)
        if code == "NoSuchBucket":
            return StorageError(f"S3 bucket of {uri} does not exist", "create the bucket or fix the URI")
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(uri)
        if code == "PreconditionFailed" or _status(exc) == 412:
            return _Exists(uri)
        if code == "NotImplemented" or _status(exc) == 501:
            return StorageError(f"the S3 service at {self._endpoint()} cannot {what} {uri}: {code} {exc}",
                                "use an S3 service with conditional writes (If-None-Match), e.g. AWS S3 or a "
                                "recent MinIO")
        if _transient(exc):
            return StorageError(f"S3 kept failing to {what} {uri} after {self.settings.attempts} attempts: {code}",
                                self._retry_fix())
        return StorageError(f"S3 refused to {what} {uri}: {code} {exc}", "check access rights")

    def read_bytes(self, uri: str) -> bytes:
        import urllib3.exceptions
        from botocore.exceptions import BotoCoreError

        bucket, key = self._split(uri)

        def get() -> bytes:
            resp = self.client.get_object(Bucket=bucket, Key=key)
            body = resp["Body"]
            # The body streams after botocore returned: a cut or stalled transfer surfaces here,
            # where botocore's retries no longer apply.
            try:
                data = body.read()
            except (BotoCoreError, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
                raise _Retryable(f"the response broke mid-body ({type(exc).__name__})") from exc
            finally:
                body.close()
            expected = int(resp.get("ContentLength", len(data)))
            if len(data) != expected:
                raise _Retryable(f"read {len(data)} of {expected} bytes")
            return data

        try:
            return self._run("read", uri, get)
        except FileNotFoundError:
            raise StorageError(f"{uri} does not exist", "check the URI or run the step that writes it") from None

    def write_bytes(self, uri: str, data: bytes) -> None:
        bucket, key = self._split(uri)
        self._run("write", uri, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data))

    def write_if_absent(self, uri: str, data: bytes) -> bool:
        bucket, key = self._split(uri)
        # If-None-Match: * makes S3 refuse (412) a PUT onto an existing key, atomically. A retried
        # PUT whose first attempt landed but whose answer was lost also gets 412: see the base class.
        try:
            self._run("create", uri, lambda: self.client.put_object(Bucket=bucket, Key=key, Body=data,
                                                                     IfNoneMatch="*"))
        except _Exists:
            return False
        return True

    def size(self, uri: str) -> int | None:
        bucket, key = self._split(uri)
        try:
            head = self._run("stat", uri, lambda: self.client.head_object(Bucket=bucket, Key=key))
        except FileNotFoundError:
            return None
        return int(head["ContentLength"])

    def exists(self, uri: str) -> bool:
        return self.size(uri) is not None

    def list_info(self, prefix: str) -> list[ObjectInfo]:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = self._split(prefix)
        key = key.rstrip("/") + "/" if key else ""

        def listing() -> list[ObjectInfo]:
            # One ListObjectsV2 call returns at most page_size keys; the paginator follows the
            # continuation tokens. botocore retries each page; a page that still fails after the
            # first one succeeded (S3 was there a moment ago) lists again from the start.
            out: list[ObjectInfo] = []
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=key, PaginationConfig={"PageSize": self.page_size})
            done = 0
            try:
                for page in pages:
                    out.extend(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj.get("ETag"))
                               for obj in page.get("Contents", []))
                    done += 1
            except (ClientError, BotoCoreError) as exc:
                if done and (not isinstance(exc, ClientError) or _transient(exc)):
                    raise _Retryable(f"the listing failed after {done} page(s) ({type(exc).__name__})") from exc
                raise
            return out

        return sorted(self._run("list", prefix, listing), key=lambda o: o.uri)

    def delete(self, uri: str) -> None:
        bucket, key = self._split(uri)
        self._run("delete", uri, lambda: self.client.delete_object(Bucket=bucket, Key=key))
