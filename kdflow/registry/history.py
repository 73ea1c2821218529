"""The champion's history: every move of the ``champion`` alias, kept as tags on the registered model.

Each move is one event, stored as the registered-model tag ``kdflow.champion.event.NNNNNN`` (a
zero-padded sequence number) whose value is JSON::

    {"seq": 3, "action": "promote", "version": "3", "previous": "2",
     "at": "2025-01-31T12:00:00Z", "by": "alice", "reason": "", "note": ""}

One tag per event rather than one growing tag: the history is unbounded and no tag value ever
reaches MLflow's size limit. ``action`` is ``promote`` (``kdflow promote``), ``auto`` (the pipeline's
auto-promotion), ``force`` (promoted despite a failed gate or champion check) or ``rollback``.

Replaying the events gives the champion *stack* (bottom first, the champion on top):

- promote, auto and force push the version;
- rollback pops: champion returns to the version below the top of the stack;
- so a rollback of a rollback goes one further back, like pressing a browser's back button twice;
- to undo a rollback, promote that version again (it is pushed anew).

The alias can also move without an event: by hand (the MLflow UI, another client), or by a kdflow
run that died after moving the alias and before writing the event (``kdflow.registry.promotion``
moves the alias first). Wherever a version is known to have held the alias (the ``previous`` of each
replayed event, and the holder now when a rollback is planned) it is reconciled with the stack in
one way:

- it is the top: nothing happened outside the record;
- it is lower in the stack: a rollback to it already happened (an interrupted ``kdflow rollback``, or
  the alias moved back by hand). The stack is cut back to its LAST occurrence, so the next rollback
  goes to the version below it, never back to the version that was rolled away from. kdflow records
  such a move as a repair event (a rollback whose note is ``repair_note``) before it acts;
- it is not in the stack: it replaced the top (an external move) and is pushed, so a rollback
  returns to the top it replaced; the rollback's event says so in its ``note``.

Replaying a rollback event (its ``previous`` is the holder it rolled back from) therefore gives the
same stack as the plan that wrote it, with or without a repair event before it. Versions deleted
from the registry cannot hold the alias: a rollback skips them and goes further back, and says so.
Everything here is pure (no MLflow), so it is tested without a registry.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

EVENT_PREFIX = "kdflow.champion.event."
PUSH_ACTIONS = ("promote", "auto", "force")
ROLLBACK = "rollback"
ACTIONS = (*PUSH_ACTIONS, ROLLBACK)
USER_ENV = "KDFLOW_USER"  # who is recorded as having moved the alias, when the OS user is not the person


@dataclass(frozen=True)
class Event:
    seq: int
    action: str  # one of ACTIONS
    version: str  # the version that holds champion after the event
    previous: str | None  # the version that held champion before it (None: none did)
    at: str  # UTC, ISO 8601 with a Z
    by: str
    reason: str = ""
    note: str = ""  # what else happened, e.g. "external: ..." or "skipped deleted version 2"

    @property
    def key(self) -> str:
        return event_key(self.seq)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class RollbackPlan:
    target: str | None  # the version champion returns to (None: there is no previous champion)
    skipped: tuple[str, ...]  # versions passed over because they were deleted from the registry
    external: bool  # the alias holder was not in the recorded stack at all (moved outside kdflow): pushed
    unrecorded: bool = False  # the holder was lower in the stack: a rollback to it went unrecorded (cut back)

    def note(self, holder: str, recorded_top: str | None) -> str:
        """The rollback event's note: what the plan had to work around, in words."""
        parts = []
        if self.unrecorded:
            parts.append(f"unrecorded: the alias was on version {holder}, below kdflow's last recorded champion "
                         f"(version {recorded_top}); taken as a rollback to it that was not recorded")
        if self.external:
            parts.append(f"external: the alias was on version {holder}, not on kdflow's last recorded champion "
                         f"({'none' if recorded_top is None else 'version ' + recorded_top}); taken as the top")
        if self.skipped:
            parts.append(f"skipped deleted version{'s' if len(self.skipped) > 1 else ''} {', '.join(self.skipped)}")
        return "; ".join(parts)


def event_key(seq: int) -> str:
    """The tag key of event ``seq``: zero-padded so the keys also sort in order as text."""
    return f"{EVENT_PREFIX}{seq:06d}"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def who() -> str:
    """$KDFLOW_USER (e.g. set by CI to the person who approved), else the OS user."""
    user = os.environ.get(USER_ENV, "").strip()
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (some containers)
        return "unknown"


def parse_events(tags: Mapping[str, str]) -> list[Event]:
    """The events among a registered model's ``tags``, in sequence order.

    A tag that does not parse (edited by hand, written by a future kdflow with other fields) is
    left out rather than fatal: a broken history must not stop a rollback, and the alias holder
    check in ``rollback_plan`` still keeps the result anchored to what the registry says now.
    """
    events = []
    for key, value in tags.items():
        if not key.startswith(EVENT_PREFIX):
            continue
        try:
            raw = json.loads(value)
            event = Event(seq=int(raw["seq"]), action=str(raw["action"]), version=str(raw["version"]),
                          previous=None if raw.get("previous") is None else str(raw["previous"]),
                          at=str(raw.get("at", "")), by=str(raw.get("by", "")), reason=str(raw.get("reason", "")),
                          note=str(raw.get("note", "")))
        except (ValueError, TypeError, KeyError):
            continue
        if event.action in ACTIONS:
            events.append(event)
    return sorted(events, key=lambda e: e.seq)


def next_seq(events: Iterable[Event]) -> int:
    return max((e.seq for e in events), default=0) + 1


PUSHED, CUT = "pushed", "cut"  # what _take_holder did


def _take_holder(stack: list[str], holder: str | None) -> str:
    """Reconcile ``stack`` (in place) with ``holder``, a version known to hold the alias (module
    docstring): "" when it is the top (or None), CUT when it was lower (the stack is cut back to its
    last occurrence: a rollback to it happened), PUSHED when it was not in the stack (external move)."""
    if holder is None or (stack and stack[-1] == holder):
        return ""
    if holder in stack:
        del stack[len(stack) - stack[::-1].index(holder):]
        return CUT
    stack.append(holder)
    return PUSHED


def unrecorded_rollback(stack: Iterable[str], holder: str | None) -> bool:
    """Whether ``holder`` (the version holding the alias now) is below the top of the replayed
    ``stack``: the alias was moved back to it without an event (an interrupted rollback, or by hand)."""
    stack = list(stack)
    return holder is not None and bool(stack) and stack[-1] != holder and holder in stack


def repair_note(holder: str) -> str:
    """The note of the event kdflow writes when it finds an ``unrecorded_rollback`` to ``holder``."""
    return (f"repair: an unrecorded move of the alias to version {holder} was found "
            "(interrupted rollback or a move outside kdflow)")


def replay(events: Iterable[Event]) -> list[str]:
    """The champion stack after ``events`` (bottom first; the last element held champion last).

    Each event's ``previous`` is reconciled with the stack first (``_take_holder``: a version lower
    in the stack is popped down to, one not in it is pushed), as the plan that wrote the event did.
    Then promote, auto and force push; a rollback pops down to the version it recorded, which also
    replays the deleted versions it skipped.
    """
    stack: list[str] = []
    for event in events:
        _take_holder(stack, event.previous)
        if event.action in PUSH_ACTIONS:
            stack.append(event.version)
            continue
        while stack and stack[-1] != event.version:
            stack.pop()
        if not stack:  # the target is not in the history (history edited): it is champion now all the same
            stack.append(event.version)
    return stack


def rollback_plan(stack: Iterable[str], holder: str, exists: Callable[[str], bool]) -> RollbackPlan:
    """Where a rollback from ``holder`` (the version holding champion now) goes, given the replayed
    ``stack`` and ``exists`` (whether a version is still in the registry).

    The holder is reconciled with the stack first (module docstring): a holder lower in the stack
    cuts it back to the holder's last occurrence (``unrecorded``), one not in it is pushed
    (``external``). Then the top (the holder) is popped, then anything that is the holder again (an
    alias moved outside kdflow can leave a version twice in a row) or deleted. Pure: ``replay`` of
    the rollback event this plan produces (version = target, previous = holder) gives the same stack.
    """
    stack = list(stack)
    taken = _take_holder(stack, holder)
    stack.pop()
    skipped = []
    while stack and (stack[-1] == holder or not exists(stack[-1])):
        top = stack.pop()
        if top != holder and top not in skipped:
            skipped.append(top)
    return RollbackPlan(stack[-1] if stack else None, tuple(skipped), taken == PUSHED, taken == CUT)
