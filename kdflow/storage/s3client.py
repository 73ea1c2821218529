"""Making S3 clients: attempts, timeouts and backoff, read from the environment when a client is made.

Its own module so that both the S3 backend and the reachability checks (kdflow.storage.reach) make
clients the same way without importing each other.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass

from kdflow.util.errors import ConfigError

# Attempts per request (botocore) and per object read or listing (kdflow). 5 attempts with the
# backoff below wait out a few seconds of 503s or a dropped connection without hiding an outage
# for minutes: a task that fails is retried by the pipeline anyway.
MAX_ATTEMPTS = 5
# A TCP connect to a healthy S3 endpoint takes milliseconds; 5 s is a very slow network, not an
# outage (botocore's default, 60 s, would sit a minute on a dead endpoint per attempt).
CONNECT_TIMEOUT_S = 5.0
# The longest wait for the next bytes of a response, not for the whole transfer: a stalled
# connection is dropped and retried. 30 s is generous for S3's first byte, even under load.
READ_TIMEOUT_S = 30.0
# Full-jitter backoff: sleep uniform(0, min(cap, base * 2**(attempt-1))), so many workers that
# failed together do not retry together.
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0

ENV_ATTEMPTS = "KDFLOW_S3_MAX_ATTEMPTS"
ENV_CONNECT_TIMEOUT = "KDFLOW_S3_CONNECT_TIMEOUT"
ENV_READ_TIMEOUT = "KDFLOW_S3_READ_TIMEOUT"

def _env_number(name: str, default: float, kind: type, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ConfigError(f"${name} is {raw!r}", f"set it to a {kind.__name__} >= {minimum}, or unset it "
                                                 f"(default {default})")
    return value


@dataclass(frozen=True)
class S3Settings:
    attempts: int
    connect_timeout: float
    read_timeout: float

    @classmethod
    def from_env(cls) -> "S3Settings":
        """The constants above, or the KDFLOW_S3_* variables, read now (at run time)."""
        return cls(int(_env_number(ENV_ATTEMPTS, MAX_ATTEMPTS, int, 1)),
                   _env_number(ENV_CONNECT_TIMEOUT, CONNECT_TIMEOUT_S, float, 0.1),
                   _env_number(ENV_READ_TIMEOUT, READ_TIMEOUT_S, float, 0.1))


# boto3's default session is not thread-safe while it makes clients (boto3 issue #1592: a KeyError
# such as 'credential_provider' from two threads at once); clients, once made, are.
_CLIENT_LOCK = threading.Lock()


def new_client(**config):
    """An S3 client with these botocore Config settings; endpoint and credentials from the
    environment, read now (boto3 reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... at creation)."""
    import boto3
    from botocore.config import Config

    with _CLIENT_LOCK:
        return boto3.client("s3", config=Config(**config))


def backoff_s(attempt: int) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter."""
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)))
