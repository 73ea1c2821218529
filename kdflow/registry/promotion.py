"""Moving the registry's ``champion`` alias: promotion (with the champion check redone) and rollback.

A student is gated against the champion of the moment it was evaluated; by the time someone promotes
it the champion may have changed. ``promote`` therefore redoes the champion check against the
CURRENT champion, from the per-sample test predictions both runs logged (no dataset needed), with the
candidate's own gate and evaluate settings (its run's ``config.yaml``). Every move is recorded in the
champion history (``kdflow.registry.history``) and on the model versions involved.

Every promotion and rollback holds the model's registry lock (``kdflow.registry.lock``), as
registration does: two of them at once would read the same history and write two events with one
sequence number (one lost), or move the alias in one order and record it in the other.

Write order: the alias is moved first, then the history event, then the version tags. The other
order would leave an event claiming a move that never happened: the history would be wrong, and a
later rollback could "return" to a version that was never champion. A missing record is
recoverable; a false one is not. Recovering it is what makes this order crash safe: before it
acts, every ``promote`` and ``rollback`` reconciles the alias with the replayed history and writes
what a dead run left out.

A run that died between the alias and the event leaves the alias on a version that is not the top
of the replayed champion stack:

- Holder LOWER in the stack (an interrupted rollback, or the alias moved back by hand): a repair
  event is written first (a rollback to the holder, note ``history.repair_note``), so the history
  says what happened and the next rollback goes below the holder, never back to the version rolled
  away from. A rerun of an interrupted ``kdflow rollback`` therefore records the first rollback and
  then rolls back once more; its message says both.
- Holder NOT in the stack (an interrupted promotion, or a move outside kdflow): rerunning the same
  promotion finds the version already holding champion but not recorded as champion, and writes
  the missing event and version tags (the rerun's action, --force and --reason, its champion check
  redone against the last recorded champion). A rollback instead takes the holder as an external
  move (pushed, then rolled back from; noted in its event).

A run that died after the event, before the version tags, left the history complete: only the
version tags read by ``kdflow registry`` miss that move, and a rerun is a no-op.

An interrupted promotion of a version that is already lower in the stack (promoting an older
version again) cannot be told from an interrupted rollback to it: it is recorded as the rollback,
the reading that never lets a later rollback bring back a version that was rolled away from.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from kdflow.config import Config
from kdflow.util.errors import ConfigError, KdflowError
from kdflow.evaluation.gate import CHAMPION_CHECK, Check, champion_check, stricter
from kdflow.registry import history
from kdflow.registry.lock import registry_lock
from kdflow.registry.aliases import CHAMPION, by_alias
from kdflow.registry.tags import Tag

CONFIG_ARTIFACT = "config.yaml"  # the resolved run config every distill run logs (tracking.log_config)


class VersionTag:
    """Tags promotion and rollback put on model versions (read by ``kdflow registry``)."""

    PROMOTION = "kdflow.promotion"  # "promoted <time> (<action>) ..." or "refused <time>: <check>"
    FORCED = "kdflow.promotion.forced"  # "true" when the last promotion overrode a failed gate or check
    REASON = "kdflow.promotion.reason"  # the reason given with the last promotion
    CHECK = "kdflow.promotion.check"  # the champion check of the last promotion, in words
    ROLLED_BACK = "kdflow.rolled_back"  # "<time>: <reason>": champion was rolled back from this version


@dataclass(frozen=True)
class PromotionResult:
    promoted: bool  # whether the version became champion: the alias moved, or an interrupted move was recorded
    version: str  # the version asked for (promote) or returned to (rollback)
    previous: str | None  # the version holding champion before (None: none did)
    message: str  # what happened, in words
    check: Check | None  # the champion check (None: not run, e.g. a no-op or a rollback)


def connect(tracking_uri: str | None):
    """An MlflowClient on ``tracking_uri`` (None: $MLFLOW_TRACKING_URI) for both tracking and registry.
    A given URI with credentials is refused (kdflow.util.redact): they belong in the environment."""
    from mlflow import MlflowClient

    from kdflow.util.redact import refuse_credentials
    from kdflow.registry.tracking import use_tracking

    refuse_credentials(tracking_uri, "tracking_uri")

    uri = use_tracking(tracking_uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def registered_model(client, name: str):
    """The registered model ``name``; a KdflowError with the fix when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    from kdflow.util.redact import redact_uri  # a URI in an error message must not repeat a password

    raise KdflowError(f"there is no registered model {name!r} in the MLflow registry at "
                      f"{redact_uri(client.tracking_uri)}",
                      "check the name (registry.model_name of the run config) and --tracking-uri")


def _model_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    raise KdflowError(f"{name} has no version {version!r}", f"list its versions with `kdflow registry {name}`")


def run_config(client, run_id: str | None) -> tuple[Config, str]:
    """A version's run config (its gate and evaluate settings) and a note when defaults stood in: a
    run logged before kdflow recorded its config, or a config this kdflow cannot read."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return Config(), "the version has no run: default gate settings used"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            text = Path(client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)).read_text()
        except (MlflowException, OSError):
            return Config(), f"run {run_id} has no {CONFIG_ARTIFACT}: default gate settings used"
    try:
        return Config.from_yaml(text, source=f"run {run_id} {CONFIG_ARTIFACT}"), ""
    except ConfigError as exc:
        return Config(), f"run {run_id} {CONFIG_ARTIFACT} does not load ({exc.problem}): default gate settings used"


def _check_against_champion(client, name: str, candidate, holder) -> tuple[Check, str]:
    """The champion check of ``candidate`` against ``holder`` (the current champion, or None), and
    a note on the settings used."""
    from kdflow.evaluation.record import Predictions

    cfg, note = run_config(client, candidate.run_id)
    if holder is None:
        return champion_check(None, None, None, cfg.gate, cfg.evaluate), note
    student = Predictions.of_run(client, candidate.run_id) if candidate.run_id else None
    if student is None:
        return Check(CHAMPION_CHECK, None, f"student - champion top-1, CI low >= -{cfg.gate.champion_tolerance}",
                     False, f"{name} version {candidate.version} has no recorded test predictions, so it cannot "
                            f"be compared with {name} version {holder.version} (promote with --force --reason to "
                            "replace it anyway)"), note
    champion = Predictions.of_run(client, holder.run_id) if holder.run_id else None
    gate = stricter(cfg.gate, run_config(client, holder.run_id)[0].gate)  # the candidate may not loosen the bar
    return champion_check(student, champion, f"{name} version {holder.version}", gate, cfg.evaluate), note


def _append_event(client, name: str, action: str, version: str, previous: str | None, reason: str,
                  note: str = "") -> history.Event:
    events = history.parse_events(registered_model(client, name).tags)
    event = history.Event(history.next_seq(events), action, version, previous, history.utc_now(), history.who(),
                          reason, note)
    client.set_registered_model_tag(name, event.key, event.to_json())
    return event


def _reconciled_stack(client, name: str, holder: str | None) -> tuple[list[str], str]:
    """The replayed champion stack, after writing the repair event when ``holder`` (the version
    holding the alias now) is below its top (an unrecorded rollback: module docstring), and a line
    saying so ("" when there was nothing to repair)."""
    events = history.parse_events(registered_model(client, name).tags)
    stack = history.replay(events)
    if not history.unrecorded_rollback(stack, holder):
        return stack, ""
    event = _append_event(client, name, history.ROLLBACK, holder, stack[-1], "", history.repair_note(holder))
    return history.replay([*events, event]), f"recorded first: {event.note}"


def _version_if_exists(client, name: str, version: str | None):
    """Model version ``version`` of ``name``, or None when it is None or was deleted."""
    if version is None:
        return None
    try:
        return _model_version(client, name, version)
    except KdflowError:
        return None


def _moved(previous: str | None, version: str) -> str:
    return f"champion: {'none' if previous is None else 'version ' + previous} -> version {version}"


def _with(message: str, repaired: str) -> str:
    return f"{repaired}; {message}" if repaired else message


def promote(name: str, version: str, tracking_uri: str | None, force: bool = False, reason: str = "",
            action: str = "promote") -> PromotionResult:
    """Give ``name`` version ``version`` the champion alias if it passed its gate and does not
    regress against the current champion; ``force`` (with a ``reason``) overrides both.

    When ``version`` already holds the alias but the history does not record it as champion (a
    run died after moving the alias), the promotion is recorded instead (module docstring)."""
    if action not in history.PUSH_ACTIONS:
        raise ValueError(f"action must be one of {history.PUSH_ACTIONS}, got {action!r}")
    reason = reason.strip()
    if force and not reason:
        raise KdflowError("a forced promotion needs a reason", "pass --reason TEXT: it is recorded with the promotion")
    version = str(version)
    client = connect(tracking_uri)
    with registry_lock(client, name):  # a concurrent promotion or rollback would interleave its writes
        return _promote(client, name, version, force, reason, action)


def _promote(client, name: str, version: str, force: bool, reason: str, action: str) -> PromotionResult:
    registered_model(client, name)
    candidate = _model_version(client, name, version)
    holder = by_alias(client, name, CHAMPION)
    previous = None if holder is None else str(holder.version)
    stack, repaired = _reconciled_stack(client, name, previous)
    recovering = previous == version
    if recovering:
        if stack and stack[-1] == version:
            return PromotionResult(False, version, previous, _with(f"{name} version {version} already holds "
                                                                   f"{CHAMPION}: nothing changed", repaired), None)
        # The alias is on the version but the history is not: an interrupted promotion. Record it,
        # checked against the last recorded champion, which is the one it replaced.
        previous = stack[-1] if stack else None
        holder = _version_if_exists(client, name, previous)
        if previous is not None and holder is None and not force:
            # The champion it replaced is gone, so it cannot be compared: fail closed, as promote does.
            raise KdflowError(f"{name} version {version} holds {CHAMPION} with no recorded promotion, and the "
                              f"version it replaced ({previous}) was deleted, so the promotion cannot be checked",
                              "pass --force --reason TEXT to record it, or promote another version")
    gate_passed = candidate.tags.get(Tag.GATE_PASSED) == "true"
    if not gate_passed and not force:
        raise KdflowError(f"{name} version {version} did not pass its evaluation gate "
                          f"({candidate.tags.get(Tag.GATE, 'no gate verdict recorded')})"
                          + (f", yet holds {CHAMPION} with no recorded promotion" if recovering else ""),
                          "promote a version that passed, or pass --force --reason TEXT to override the gate")
    check, note = _check_against_champion(client, name, candidate, holder)
    now = history.utc_now()
    if not check.passed and not force:
        client.set_model_version_tag(name, version, VersionTag.PROMOTION, f"refused {now}: {check.line()}")
        held = f"; it holds {CHAMPION} all the same, with no recorded promotion" if recovering else ""
        return PromotionResult(False, version, previous,
                               _with(f"refused: {check.line()}" + (f" ({note})" if note else "") + held, repaired),
                               check)

    forced = force and not (check.passed and gate_passed)
    used = "force" if forced else action
    if not recovering:
        client.set_registered_model_alias(name, CHAMPION, version)  # first: see the module docstring
    event = _append_event(client, name, used, version, previous, reason)
    replacing = "no champion" if previous is None else f"version {previous}"
    client.set_model_version_tag(name, version, VersionTag.PROMOTION,
                                 f"promoted {event.at} ({used}) by {event.by}, replacing {replacing}")
    client.set_model_version_tag(name, version, VersionTag.CHECK, check.line())
    # Written on every promotion (not only forced ones) so a tag left by an earlier forced
    # promotion of the same version never describes this one.
    client.set_model_version_tag(name, version, VersionTag.FORCED, str(forced).lower())
    client.set_model_version_tag(name, version, VersionTag.REASON, reason)
    why = [] if not forced else [f"forced: {reason}"]
    why += [check.line()] + ([note] if note else [])
    moved = f"{_moved(previous, version)} ({used})"
    if recovering:
        moved = (f"{name} version {version} already holds {CHAMPION}: recorded the promotion an interrupted run "
                 f"left unrecorded, {moved}")
    return PromotionResult(True, version, previous, _with(f"{moved}; " + "; ".join(why), repaired), check)


def rollback(name: str, tracking_uri: str | None, reason: str = "") -> PromotionResult:
    """Return champion to the version below the top of the champion stack (history module), after
    recording an unrecorded rollback to the current holder if there was one (module docstring)."""
    reason = reason.strip()
    client = connect(tracking_uri)
    with registry_lock(client, name):  # a concurrent promotion or rollback would interleave its writes
        return _rollback(client, name, reason)


def _rollback(client, name: str, reason: str) -> PromotionResult:
    registered_model(client, name)
    holder = by_alias(client, name, CHAMPION)
    if holder is None:
        raise KdflowError(f"{name} has no {CHAMPION}: there is nothing to roll back",
                          f"promote a version with `kdflow promote {name} VERSION`")
    current = str(holder.version)
    stack, repaired = _reconciled_stack(client, name, current)
    existing = {str(v.version) for v in client.search_model_versions(f"name='{name}'", max_results=10_000)}
    plan = history.rollback_plan(stack, current, existing.__contains__)
    note = plan.note(current, stack[-1] if stack else None)
    if plan.target is None:
        raise KdflowError(_with(f"{name} has no previous {CHAMPION} to roll back to from version {current}"
                                + (f" ({note})" if note else ""), repaired),
                          f"promote a version with `kdflow promote {name} VERSION`")
    client.set_registered_model_alias(name, CHAMPION, plan.target)  # first: see the module docstring
    event = _append_event(client, name, history.ROLLBACK, plan.target, current, reason, note)
    client.set_model_version_tag(name, current, VersionTag.ROLLED_BACK, f"{event.at}: {reason or 'no reason given'}")
    client.set_model_version_tag(name, plan.target, VersionTag.PROMOTION,
                                 f"restored {event.at} (rollback) by {event.by}, replacing version {current}")
    message = f"{_moved(current, plan.target)} (rollback)" + (f"; {note}" if note else "")
    return PromotionResult(True, plan.target, current, _with(message, repaired), None)
