"""A mutex per registered model, made of MLflow's own primitives, so two registrations or promotions
of one model never interleave: no duplicate version of a run, no lost alias, no lost history event.

Why a registered model: creating one is atomic on every MLflow store (its name is the table's
unique key; a second create gets RESOURCE_ALREADY_EXISTS, on a tracking server and on a SQLite
file alike), it needs no other service, and it works wherever kdflow can register a model at all.
The lock for model ``NAME`` is the registered model ``NAME.kdflow-lock`` (no versions; its
description says what it is): created to take the lock, deleted to release it.

A holder that dies (a preempted pod, a killed process) leaves its lock behind. Its tags say who
took it and when; a lock older than ``ttl`` seconds is broken with a warning, which is safe because
what it guards takes seconds (a registration, an alias move, a history event). The one race left is
two waiters breaking the same stale lock at once; the second re-reads it first and deletes it only if
it is still the stale one it saw, so that window is a few milliseconds, once per dead holder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from typing import Iterator

from kdflow.util.errors import KdflowError

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".kdflow-lock"
HOLDER_TAG = "kdflow.lock.holder"  # "user@host pid N <uuid>": who holds it
SINCE_TAG = "kdflow.lock.since"  # the holder's time.time() when it took the lock
TTL_S = 300.0  # a lock this old belongs to a dead holder (the guarded work takes seconds)
# How long to wait for a holder before giving up: longer than the TTL, so that a waiter who came just
# after a holder died outlasts the TTL and breaks the lock instead of failing.
TIMEOUT_S = TTL_S + 120.0
_FIRST_WAIT_S, _MAX_WAIT_S = 0.05, 2.0  # back-off between tries (doubled each time, with jitter)


def lock_name(name: str) -> str:
    return f"{name}{LOCK_SUFFIX}"


def is_lock(name: str) -> bool:
    """Whether the registered model ``name`` is a kdflow lock (listings of models leave these out)."""
    return name.endswith(LOCK_SUFFIX)


def _holder_id() -> str:
    try:
        user = os.getlogin()
    except OSError:
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()} pid {os.getpid()} {uuid.uuid4().hex[:12]}"


def _error_code(exc: Exception) -> str:
    return getattr(exc, "error_code", "")


def _read(client, name: str):
    """The lock model, or None when no one holds it."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


def _delete(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":  # already released or broken: fine
            raise


def _age(model, now: float) -> float:
    try:
        return now - float(model.tags[SINCE_TAG])
    except (KeyError, TypeError, ValueError):  # no or garbled time: the server's creation time
        return now - (model.creation_timestamp or 0) / 1000


def _try_create(client, name: str, holder: str, model: str) -> bool:
    """Take the lock: True when this call created it (or a retried request of ours did)."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(
            name, tags={HOLDER_TAG: holder, SINCE_TAG: f"{time.time():.3f}"},
            description=f"kdflow registry lock of {model}: held while a registration or promotion runs. "
                        f"Delete it only if its holder is dead (kdflow breaks it after {TTL_S:.0f} s).")
        return True
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            # A SQL store that lost the race looks the winner up for its message, and the winner
            # had released the lock already: contended, so try again.
            return False
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS":
            raise
    # An HTTP client retries a request whose answer was lost: the lock may be ours already.
    current = _read(client, name)
    return current is not None and current.tags.get(HOLDER_TAG) == holder


@contextlib.contextmanager
def registry_lock(client, name: str, ttl: float = TTL_S, timeout: float = TIMEOUT_S) -> Iterator[str]:
    """Hold the lock of registered model ``name`` within the block (yields the holder id). Waits for
    another holder with bounded, jittered back-off; breaks a lock older than ``ttl`` seconds; raises
    a KdflowError after ``timeout`` seconds of waiting for a live holder."""
    if is_lock(name):
        raise KdflowError(f"registered model name {name!r} ends with {LOCK_SUFFIX!r}, which kdflow reserves for "
                          "its registry locks", "choose another registry.model_name")
    target, holder = lock_name(name), _holder_id()
    deadline = time.monotonic() + timeout
    wait, said = _FIRST_WAIT_S, False
    while not _try_create(client, target, holder, name):
        if not said:
            log.info("the registry lock of %s is held: waiting for it", name)
            said = True
        current = _read(client, target)
        if current is not None and _age(current, time.time()) > ttl:
            stale = current.tags.get(HOLDER_TAG)
            again = _read(client, target)  # re-read: another waiter may have broken it and taken it since
            if again is not None and again.tags.get(HOLDER_TAG) == stale:
                log.warning("breaking the registry lock of %s held by %s for %.0f s (longer than %.0f s: its "
                            "holder died)", name, stale or "an unknown holder", _age(again, time.time()), ttl)
                _delete(client, target)
            continue
        if time.monotonic() > deadline:
            who = current.tags.get(HOLDER_TAG, "an unknown holder") if current else "another process"
            raise KdflowError(f"the registry lock of {name} ({target}) is held by {who}: waited {timeout:.0f} s",
                              f"retry when it is released; if its holder died, kdflow breaks it {ttl:.0f} s after it "
                              f"was taken, or delete the registered model {target} by hand")
        time.sleep(wait * random.uniform(0.5, 1.5))  # jitter: waiters do not retry in lockstep
        wait = min(wait * 2, _MAX_WAIT_S)
    try:
        yield holder
    finally:
        _release(client, target, holder, name)


def _release(client, target: str, holder: str, name: str) -> None:
    """Delete the lock if it is still ours (one broken as stale and taken by another must stay). A
    registry that fails to answer now leaves the lock to be broken after its TTL: said, not raised,
    so that the block's own outcome (or error) is what the caller sees."""
    try:
        current = _read(client, target)
        if current is not None and current.tags.get(HOLDER_TAG) == holder:
            _delete(client, target)
        else:
            log.warning("the registry lock of %s was no longer ours at release (broken as stale?)", name)
    except Exception as exc:  # noqa: BLE001 (any failure of the registry here is the same to us)
        log.warning("could not release the registry lock of %s (%s): it is broken %.0f s after it was taken",
                    name, type(exc).__name__, TTL_S)
