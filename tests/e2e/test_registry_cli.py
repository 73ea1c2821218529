"""`kdflow promote`, `kdflow rollback` and `kdflow registry` against a real MLflow SQLite registry.

Runs log what a distill run logs for promotion (config.yaml, per-sample test predictions, the test
metrics); versions are registered from them with the gate tags registration copies (no model is
needed: promotion never loads one). Each test uses its own registered model in one shared store.
"""

import json
from unittest import mock

import numpy as np
import pytest

from kdflow.config import Config
from kdflow.evaluation.record import Predictions
from kdflow.registry.history import parse_events
from kdflow.registry.promotion import VersionTag
from kdflow.registry.tags import Tag
from tests.helpers import cli_in_process

pytestmark = pytest.mark.e2e

IDS = np.array([f"img{i:04d}" for i in range(400)])
LABELS = np.arange(400) % 10
# Which of the 400 test images each student gets wrong: "worse" is 60% correct, the others 95-98.75%,
# each better one wrong on a subset of the one before (no paired difference < 0, so the champion
# check passes whether it asks the interval's low or high end to clear the tolerance).
WRONG = {"good": np.arange(400) % 20 == 0, "better": np.arange(400) % 40 == 0,
         "best": np.arange(400) % 80 == 0, "worse": np.isin(np.arange(400) % 5, (0, 1))}
PASSED = {Tag.GATE_PASSED: "true", Tag.GATE: "passed", Tag.PROMOTABLE: "true"}
FAILED = {Tag.GATE_PASSED: "false", Tag.GATE: "failed: FAIL min_accuracy = 0.6 (>= 0.9)", Tag.PROMOTABLE: "false"}


kdflow = cli_in_process


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking URI, MlflowClient, {student: run id}): one run per student in WRONG."""
    import mlflow
    from mlflow import MlflowClient

    from kdflow.registry import tracking

    home = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{home / 'mlflow.db'}"
    tracking.use_tracking(uri)
    experiment = tracking.experiment_id("registry-cli", uri)
    runs = {}
    for student, wrong in WRONG.items():
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_text(Config().to_yaml(), "config.yaml")
            top1 = np.where(wrong, (LABELS + 1) % 10, LABELS)
            Predictions(IDS, LABELS, top1, "fp-digits", tuple("0123456789")).log()
            accuracy = 1 - wrong.mean()
            mlflow.log_metrics({"test_student_accuracy": accuracy, "test_student_accuracy_ci_low": accuracy - 0.01,
                                "test_student_accuracy_ci_high": min(1.0, accuracy + 0.01),
                                "test_agreement": 0.98, "student_latency_p95_ms": 1.25,
                                "student_size_bytes": 2_500_000, "mia_auc": 0.51})
            runs[student] = run.info.run_id
    return uri, MlflowClient(tracking_uri=uri, registry_uri=uri), runs, home


def make_model(store, name, *versions):
    """Register ``name`` with one version per (student, gate tags) in ``versions``: versions 1, 2, ..."""
    uri, client, runs, _ = store
    client.create_registered_model(name)
    for student, tags in versions:
        client.create_model_version(name, source=f"runs:/{runs[student]}/model", run_id=runs[student],
                                    tags={**tags, Tag.RUN_ID: runs[student]})
    return client, uri


def champion(client, name):
    return str(client.get_registered_model(name).aliases.get("champion"))


def events(client, name):
    return parse_events(client.get_registered_model(name).tags)


def test_first_promotion_with_no_champion_passes(store, monkeypatch):
    monkeypatch.setenv("KDFLOW_USER", "alice")
    client, uri = make_model(store, "first", ("good", PASSED))
    ran = kdflow("promote", "first", "1", "--tracking-uri", uri)
    assert ran.code == 0, ran.err
    assert "champion: none -> version 1" in ran.out and "no champion yet" in ran.out
    assert champion(client, "first") == "1"
    [event] = events(client, "first")
    assert (event.action, event.version, event.previous, event.by) == ("promote", "1", None, "alice")
    assert client.get_model_version("first", "1").tags[VersionTag.PROMOTION].startswith("promoted ")

    again = kdflow("promote", "first", "1", "--tracking-uri", uri)
    assert again.code == 0 and "already holds champion" in again.out
    assert len(events(client, "first")) == 1


def test_worse_student_is_refused_with_exit_3_and_the_reason_recorded(store):
    client, uri = make_model(store, "worse", ("good", PASSED), ("worse", PASSED))
    assert kdflow("promote", "worse", "1", "--tracking-uri", uri).code == 0
    ran = kdflow("promote", "worse", "2", "--tracking-uri", uri)
    assert ran.code == 3, ran.err
    assert "not promoted" in ran.err and "gate.champion_tolerance" in ran.err
    note = client.get_model_version("worse", "2").tags[VersionTag.PROMOTION]
    assert note.startswith("refused ") and "FAIL champion = -0.35" in note and "worse version 1" in note
    assert champion(client, "worse") == "1" and len(events(client, "worse")) == 1


def test_force_needs_a_reason(store):
    client, uri = make_model(store, "noreason", ("good", PASSED), ("worse", PASSED))
    assert kdflow("promote", "noreason", "1", "--tracking-uri", uri).code == 0
    ran = kdflow("promote", "noreason", "2", "--force", "--tracking-uri", uri)
    assert ran.code == 2 and "--force needs --reason" in ran.err
    assert champion(client, "noreason") == "1"


def test_force_with_a_reason_promotes_and_records_it(store):
    client, uri = make_model(store, "forced", ("good", PASSED), ("worse", PASSED))
    assert kdflow("promote", "forced", "1", "--tracking-uri", uri).code == 0
    ran = kdflow("promote", "forced", "2", "--force", "--reason", "INC-42: v1 leaks PII", "--tracking-uri", uri)
    assert ran.code == 0, ran.err
    assert "champion: version 1 -> version 2 (force)" in ran.out
    assert champion(client, "forced") == "2"
    tags = client.get_model_version("forced", "2").tags
    assert tags[VersionTag.FORCED] == "true" and tags[VersionTag.REASON] == "INC-42: v1 leaks PII"
    assert tags[VersionTag.CHECK].startswith("FAIL champion")
    assert "(force)" in tags[VersionTag.PROMOTION]
    last = events(client, "forced")[-1]
    assert (last.action, last.version, last.previous, last.reason) == ("force", "2", "1", "INC-42: v1 leaks PII")


def test_failed_gate_version_is_refused(store):
    client, uri = make_model(store, "gated", ("good", PASSED), ("best", FAILED))
    ran = kdflow("promote", "gated", "2", "--tracking-uri", uri)
    assert ran.code == 2
    assert "did not pass its evaluation gate (failed: FAIL min_accuracy" in ran.err and "fix:" in ran.err
    assert "Traceback" not in ran.err
    assert "champion" not in client.get_registered_model("gated").aliases


def test_rollback_restores_the_previous_champion_and_a_rollback_of_it_goes_further_back(store):
    client, uri = make_model(store, "back", ("good", PASSED), ("better", PASSED), ("best", PASSED))
    for version in ("1", "2", "3"):
        assert kdflow("promote", "back", version, "--tracking-uri", uri).code == 0
    ran = kdflow("rollback", "back", "--reason", "latency regression in prod", "--tracking-uri", uri)
    assert ran.code == 0, ran.err
    assert "champion: version 3 -> version 2 (rollback)" in ran.out and champion(client, "back") == "2"
    assert client.get_model_version("back", "3").tags[VersionTag.ROLLED_BACK].endswith(": latency regression in prod")

    ran = kdflow("rollback", "back", "--tracking-uri", uri)
    assert "champion: version 2 -> version 1" in ran.out and champion(client, "back") == "1"
    assert [(e.action, e.version, e.previous) for e in events(client, "back")[-2:]] == [
        ("rollback", "2", "3"), ("rollback", "1", "2")]

    # Undoing a rollback is promoting again; then rollback goes back to the champion before it.
    assert kdflow("promote", "back", "3", "--tracking-uri", uri).code == 0
    assert "version 3 -> version 1" in kdflow("rollback", "back", "--tracking-uri", uri).out


def test_rollback_with_no_previous_champion_fails_clearly(store):
    client, uri = make_model(store, "lonely", ("good", PASSED))
    ran = kdflow("rollback", "lonely", "--tracking-uri", uri)
    assert ran.code == 2 and "lonely has no champion: there is nothing to roll back" in ran.err
    assert kdflow("promote", "lonely", "1", "--tracking-uri", uri).code == 0
    ran = kdflow("rollback", "lonely", "--tracking-uri", uri)
    assert ran.code == 2, ran.out
    assert "lonely has no previous champion to roll back to from version 1" in ran.err
    assert "fix: promote a version with `kdflow promote lonely VERSION`" in ran.err
    assert champion(client, "lonely") == "1"


def test_rollback_skips_deleted_versions_and_takes_an_outside_move_as_champion(store):
    client, uri = make_model(store, "gone", ("good", PASSED), ("better", PASSED), ("best", PASSED))
    for version in ("1", "2", "3"):
        assert kdflow("promote", "gone", version, "--tracking-uri", uri).code == 0
    client.delete_model_version("gone", "2")
    ran = kdflow("rollback", "gone", "--tracking-uri", uri)
    assert "champion: version 3 -> version 1 (rollback); skipped deleted version 2" in ran.out

    client.set_registered_model_alias("gone", "champion", "3")  # moved in the MLflow UI, not by kdflow
    ran = kdflow("rollback", "gone", "--tracking-uri", uri)
    assert ran.code == 0 and "version 3 -> version 1" in ran.out and "external: the alias was on version 3" in ran.out
    assert events(client, "gone")[-1].note.startswith("external")


def killed_before_the_event():
    """A kdflow process that dies after moving the alias, before writing the history event."""
    return mock.patch("kdflow.registry.promotion._append_event", side_effect=RuntimeError("killed"))


def test_rollback_after_an_interrupted_rollback_goes_below_it_not_back(store):
    client, uri = make_model(store, "halfback", ("good", PASSED), ("better", PASSED), ("best", PASSED))
    for version in ("1", "2", "3"):
        assert kdflow("promote", "halfback", version, "--tracking-uri", uri).code == 0
    with killed_before_the_event(), pytest.raises(RuntimeError, match="killed"):
        kdflow("rollback", "halfback", "--tracking-uri", uri)
    assert champion(client, "halfback") == "2" and len(events(client, "halfback")) == 3  # moved, not recorded

    ran = kdflow("rollback", "halfback", "--tracking-uri", uri)
    assert ran.code == 0, ran.err
    assert ran.out.startswith("recorded first: repair: an unrecorded move of the alias to version 2 was found "
                              "(interrupted rollback or a move outside kdflow); champion: version 2 -> version 1")
    assert champion(client, "halfback") == "1"  # not 3, the version rolled away from
    repair, back = events(client, "halfback")[-2:]
    assert (repair.action, repair.version, repair.previous) == ("rollback", "2", "3")
    assert repair.note.startswith("repair: an unrecorded move of the alias to version 2")
    assert (back.action, back.version, back.previous, back.note) == ("rollback", "1", "2", "")


def test_promotion_over_an_alias_moved_back_by_hand_records_the_move_first(store):
    client, uri = make_model(store, "byhand", ("good", PASSED), ("better", PASSED), ("best", PASSED))
    for version in ("1", "2", "3"):
        assert kdflow("promote", "byhand", version, "--tracking-uri", uri).code == 0
    client.set_registered_model_alias("byhand", "champion", "1")  # moved back in the MLflow UI
    ran = kdflow("promote", "byhand", "2", "--tracking-uri", uri)
    assert ran.code == 0, ran.err
    assert "recorded first: repair: an unrecorded move of the alias to version 1" in ran.out
    assert "champion: version 1 -> version 2 (promote)" in ran.out
    assert [(e.action, e.version, e.previous) for e in events(client, "byhand")[-2:]] == [
        ("rollback", "1", "3"), ("promote", "2", "1")]
    assert "version 2 -> version 1" in kdflow("rollback", "byhand", "--tracking-uri", uri).out  # not to 3


def test_rerun_of_an_interrupted_forced_promotion_records_it(store):
    client, uri = make_model(store, "halfforced", ("good", PASSED), ("worse", PASSED))
    assert kdflow("promote", "halfforced", "1", "--tracking-uri", uri).code == 0
    args = ("promote", "halfforced", "2", "--force", "--reason", "INC-7", "--tracking-uri", uri)
    with killed_before_the_event(), pytest.raises(RuntimeError, match="killed"):
        kdflow(*args)
    assert champion(client, "halfforced") == "2" and len(events(client, "halfforced")) == 1
    assert VersionTag.FORCED not in client.get_model_version("halfforced", "2").tags

    ran = kdflow(*args)
    assert ran.code == 0, ran.err
    assert ("halfforced version 2 already holds champion: recorded the promotion an interrupted run left "
            "unrecorded, champion: version 1 -> version 2 (force); forced: INC-7; FAIL champion") in ran.out
    last = events(client, "halfforced")[-1]
    assert (last.action, last.version, last.previous, last.reason) == ("force", "2", "1", "INC-7")
    tags = client.get_model_version("halfforced", "2").tags
    assert (tags[VersionTag.FORCED], tags[VersionTag.REASON]) == ("true", "INC-7")
    assert "(force)" in tags[VersionTag.PROMOTION] and tags[VersionTag.CHECK].startswith("FAIL champion")

    again = kdflow(*args)  # recorded now: a no-op
    assert again.code == 0 and "already holds champion: nothing changed" in again.out
    assert len(events(client, "halfforced")) == 2
    assert "version 2 -> version 1" in kdflow("rollback", "halfforced", "--tracking-uri", uri).out


def test_unknown_model_or_version_is_bad_input(store):
    _, uri = make_model(store, "known", ("good", PASSED))
    assert "no registered model 'nope'" in kdflow("promote", "nope", "1", "--tracking-uri", uri).err
    ran = kdflow("promote", "known", "7", "--tracking-uri", uri)
    assert ran.code == 2 and "known has no version '7'" in ran.err


def test_registry_lists_versions_with_aliases_metrics_and_verdicts(store):
    client, uri = make_model(store, "listed", ("good", PASSED), ("worse", PASSED), ("best", FAILED))
    assert kdflow("promote", "listed", "1", "--tracking-uri", uri).code == 0
    assert kdflow("promote", "listed", "2", "--tracking-uri", uri).code == 3
    ran = kdflow("registry", "listed", "--tracking-uri", uri)
    assert ran.code == 0, ran.err
    header, *lines = ran.out.splitlines()
    assert header.split()[:3] == ["version", "created", "aliases"]
    assert [line.split()[0] for line in lines] == ["3", "2", "1"]
    v3, v2, v1 = lines
    assert "failed" in v3 and "champion" not in v3
    assert "champion" in v1 and "95.0% [94.0, 96.0]" in v1 and "passed" in v1 and "promoted " in v1
    assert "60.0%" in v2 and "refused " in v2 and "2.50" in v2 and "0.510" in v2

    rows = json.loads(kdflow("registry", "listed", "--json", "--tracking-uri", uri).out)
    assert [r["version"] for r in rows] == ["3", "2", "1"]
    assert rows[2]["aliases"] == ["champion"] and rows[2]["top1"] == pytest.approx(0.95)
    assert (rows[0]["gate"], rows[0]["promotable"], rows[1]["size_bytes"]) == ("failed", False, 2_500_000)


def test_tracking_uri_defaults_to_the_local_store_else_says_how_to_set_it(store, monkeypatch, tmp_path):
    make_model(store, "local", ("good", PASSED))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KDFLOW_HOME", str(store[3]))
    ran = kdflow("registry", "local")
    assert ran.code == 0 and ran.out.splitlines()[1].startswith("1 ")
    monkeypatch.setenv("KDFLOW_HOME", str(tmp_path))
    ran = kdflow("registry", "local")
    assert ran.code == 2 and f"no local store at {tmp_path / 'mlflow.db'}" in ran.err
    assert "fix: pass --tracking-uri URI, set MLFLOW_TRACKING_URI" in ran.err
