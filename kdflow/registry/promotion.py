"""Moving the registry's ``champion`` alias: promotion (with the champion check redone) and rollback.

A student is gated against the champion of the moment it was evaluated; by the time someone promotes
it the champion may have changed. ``promote`` therefore redoes the champion check against the
CURRENT champion, from the per-sample test predictions both runs logged (no dataset needed), with the
candidate's own gate and evaluate settings (its run's ``config.yaml``). Every move is recorded in the
champion history (``kdflow.registry.history``) and on the model versions involved.

Write order: the alias is moved first, then the history event, then the version tags. If the
process dies between the alias and the event, the registry is in the state an alias moved outside
kdflow leaves, which the history already handles (the holder is taken as the top of the stack; the
next rollback notes it as external), and a rerun of the same promotion is a no-op. The other order
would leave an event claiming a move that never happened: the history would be wrong, and a later
rollback could "return" to a version that was never champion. A missing record is recoverable; a
false one is not.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from kdflow.config import Config
from kdflow.errors import ConfigError, KdflowError
from kdflow.gate import CHAMPION_CHECK, Check, champion_check
from kdflow.registry import history
from kdflow.steps.champion import CHAMPION, _by_alias
from kdflow.tracking import Tag

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
    promoted: bool  # whether the alias moved
    version: str  # the version asked for (promote) or returned to (rollback)
    previous: str | None  # the version holding champion before (None: none did)
    message: str  # what happened, in words
    check: Check | None  # the champion check (None: not run, e.g. a no-op or a rollback)


def connect(tracking_uri: str | None):
    """An MlflowClient on ``tracking_uri`` (None: $MLFLOW_TRACKING_URI) for both tracking and registry."""
    from mlflow import MlflowClient

    from kdflow.tracking import use_tracking

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
    from kdflow.cli_cluster import redacted  # a URI in an error message must not repeat a password

    raise KdflowError(f"there is no registered model {name!r} in the MLflow registry at "
                      f"{redacted(client.tracking_uri)}",
                      "check the name (registry.model_name of the run config) and --tracking-uri")


def _model_version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    raise KdflowError(f"{name} has no version {version!r}", f"list its versions with `kdflow registry {name}`")


def _run_config(client, run_id: str | None) -> tuple[Config, str]:
    """The candidate's own run config (its gate and evaluate settings) and a note when defaults
    stood in: a run logged before kdflow recorded its config, or a config this kdflow cannot read."""
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

    cfg, note = _run_config(client, candidate.run_id)
    if holder is None:
        return champion_check(None, None, None, cfg.gate, cfg.evaluate), note
    student = Predictions.of_run(client, candidate.run_id) if candidate.run_id else None
    if student is None:
        return Check(CHAMPION_CHECK, None, f"student - champion top-1 CI high >= -{cfg.gate.champion_tolerance}",
                     False, f"{name} version {candidate.version} has no recorded test predictions, so it cannot "
                            f"be compared with {name} version {holder.version} (promote with --force --reason to "
                            "replace it anyway)"), note
    champion = Predictions.of_run(client, holder.run_id) if holder.run_id else None
    return champion_check(student, champion, f"{name} version {holder.version}", cfg.gate, cfg.evaluate), note


def _append_event(client, name: str, action: str, version: str, previous: str | None, reason: str,
                  note: str = "") -> history.Event:
    events = history.parse_events(registered_model(client, name).tags)
    event = history.Event(history.next_seq(events), action, version, previous, history.utc_now(), history.who(),
                          reason, note)
    client.set_registered_model_tag(name, event.key, event.to_json())
    return event


def _moved(previous: str | None, version: str) -> str:
    return f"champion: {'none' if previous is None else 'version ' + previous} -> version {version}"


def promote(name: str, version: str, tracking_uri: str | None, force: bool = False, reason: str = "",
            action: str = "promote") -> PromotionResult:
    """Give ``name`` version ``version`` the champion alias if it passed its gate and does not
    regress against the current champion; ``force`` (with a ``reason``) overrides both."""
    if action not in history.PUSH_ACTIONS:
        raise ValueError(f"action must be one of {history.PUSH_ACTIONS}, got {action!r}")
    reason = reason.strip()
    if force and not reason:
        raise KdflowError("a forced promotion needs a reason", "pass --reason TEXT: it is recorded with the promotion")
    version = str(version)
    client = connect(tracking_uri)
    registered_model(client, name)
    candidate = _model_version(client, name, version)
    holder = _by_alias(client, name, CHAMPION)
    previous = None if holder is None else str(holder.version)
    if previous == version:
        return PromotionResult(False, version, previous, f"{name} version {version} already holds {CHAMPION}: "
                                                         "nothing changed", None)
    gate_passed = candidate.tags.get(Tag.GATE_PASSED) == "true"
    if not gate_passed and not force:
        raise KdflowError(f"{name} version {version} did not pass its evaluation gate "
                          f"({candidate.tags.get(Tag.GATE, 'no gate verdict recorded')})",
                          "promote a version that passed, or pass --force --reason TEXT to override the gate")
    check, note = _check_against_champion(client, name, candidate, holder)
    now = history.utc_now()
    if not check.passed and not force:
        client.set_model_version_tag(name, version, VersionTag.PROMOTION, f"refused {now}: {check.line()}")
        return PromotionResult(False, version, previous, f"refused: {check.line()}" + (f" ({note})" if note else ""),
                               check)

    forced = force and not (check.passed and gate_passed)
    used = "force" if forced else action
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
    return PromotionResult(True, version, previous, f"{_moved(previous, version)} ({used}); " + "; ".join(why),
                           check)


def rollback(name: str, tracking_uri: str | None, reason: str = "") -> PromotionResult:
    """Return champion to the version below the top of the champion stack (history module)."""
    reason = reason.strip()
    client = connect(tracking_uri)
    model = registered_model(client, name)
    holder = _by_alias(client, name, CHAMPION)
    if holder is None:
        raise KdflowError(f"{name} has no {CHAMPION}: there is nothing to roll back",
                          f"promote a version with `kdflow promote {name} VERSION`")
    current = str(holder.version)
    stack = history.replay(history.parse_events(model.tags))
    existing = {str(v.version) for v in client.search_model_versions(f"name='{name}'", max_results=10_000)}
    plan = history.rollback_plan(stack, current, existing.__contains__)
    note = plan.note(current, stack[-1] if stack else None)
    if plan.target is None:
        raise KdflowError(f"{name} has no previous {CHAMPION} to roll back to from version {current}"
                          + (f" ({note})" if note else ""),
                          f"promote a version with `kdflow promote {name} VERSION`")
    client.set_registered_model_alias(name, CHAMPION, plan.target)  # first: see the module docstring
    event = _append_event(client, name, history.ROLLBACK, plan.target, current, reason, note)
    client.set_model_version_tag(name, current, VersionTag.ROLLED_BACK, f"{event.at}: {reason or 'no reason given'}")
    client.set_model_version_tag(name, plan.target, VersionTag.PROMOTION,
                                 f"restored {event.at} (rollback) by {event.by}, replacing version {current}")
    message = f"{_moved(current, plan.target)} (rollback)" + (f"; {note}" if note else "")
    return PromotionResult(True, plan.target, current, message, None)
