"""The early stop of a scheduled run: train only when the data, teacher or config changed since the champion."""

import pytest

from kdflow.config import Config
from kdflow.registry.lineage import Lineage, config_hash
from kdflow.steps.champion import UNCHANGED_PREFIX, decide_retraining, unchanged_output
from kdflow.registry.tags import Tag

CONFIG = "registry: {model_name: sched-student}\ntrain: {epochs: 3}\n"
FINGERPRINT, TEACHER = "f" * 64, "t" * 64


@pytest.fixture()
def registry(tmp_path):
    """A SQLite MLflow registry whose champion was trained on FINGERPRINT, TEACHER and CONFIG."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("sched-student")
    tags = {Tag.DATASET_FINGERPRINT: FINGERPRINT, Tag.TEACHER_INPUT_DIGEST: TEACHER,
            Tag.CONFIG_HASH: config_hash(Config.from_yaml(CONFIG))}
    client.create_model_version("sched-student", str(tmp_path / "model"), tags=tags)
    return uri, client


def test_config_hash_ignores_where_things_are_but_not_what_is_computed():
    base = Config.from_yaml(CONFIG)
    moved = base.replace(data_uri="s3://b/d", teacher_uri="s3://b/t.pt", cache_uri="s3://b/c", tracking_uri="http://m")
    assert config_hash(moved) == config_hash(base)
    assert config_hash(Config.from_yaml(CONFIG.replace("epochs: 3", "epochs: 4"))) != config_hash(base)


def test_config_hash_ignores_how_the_student_is_judged():

    base = Config.from_yaml(CONFIG)
    judged = base.replace(gate=base.gate.replace(max_mia_auc=0.6),
                          evaluate=base.evaluate.replace(bootstrap=200),
                          registry=base.registry.replace(alias="candidate"))
    assert config_hash(judged) == config_hash(base)


def test_no_champion_yet_trains(registry):
    uri, _ = registry
    out = decide_retraining(FINGERPRINT, TEACHER, CONFIG, uri, skip_unchanged=True)
    assert out == {"retrain": True, "reason": "sched-student has no champion yet"}


def test_unchanged_inputs_stop_and_say_why(registry):
    uri, client = registry
    client.set_registered_model_alias("sched-student", "champion", "1")
    out = decide_retraining(FINGERPRINT, TEACHER, CONFIG, uri, skip_unchanged=True)
    assert not out["retrain"]
    assert out["reason"].startswith("nothing changed since sched-student version 1 (@champion): same dataset "
                                    f"fingerprint {FINGERPRINT[:12]}, teacher {TEACHER[:12]}")
    assert unchanged_output(out["reason"]) == UNCHANGED_PREFIX + out["reason"]


@pytest.mark.parametrize("fingerprint, teacher, config, what", [
    ("e" * 64, TEACHER, CONFIG, "dataset fingerprint eeeeeeeeeeee (champion: ffffffffffff)"),
    (FINGERPRINT, "u" * 64, CONFIG, "teacher digest uuuuuuuuuuuu (champion: tttttttttttt)"),
    (FINGERPRINT, TEACHER, CONFIG.replace("epochs: 3", "epochs: 5"), "config hash"),
])
def test_any_change_trains_and_names_it(registry, fingerprint, teacher, config, what):
    uri, client = registry
    client.set_registered_model_alias("sched-student", "champion", "1")
    out = decide_retraining(fingerprint, teacher, config, uri, skip_unchanged=True)
    assert out["retrain"] and out["reason"].startswith("inputs differ from sched-student version 1 (@champion)")
    assert what in out["reason"] and out["reason"].count(";") == 0  # only what changed is named


def test_a_champion_without_lineage_tags_is_never_taken_as_unchanged():
    lineage = Lineage(FINGERPRINT, TEACHER, "c" * 64)
    assert len(lineage.differences({})) == 3
    assert "not recorded" in lineage.differences({})[0]


def test_skip_unchanged_off_always_trains(registry):
    uri, client = registry
    client.set_registered_model_alias("sched-student", "champion", "1")
    out = decide_retraining(FINGERPRINT, TEACHER, CONFIG, uri, skip_unchanged=False)
    assert out["retrain"] and "always trains" in out["reason"]


def test_a_student_from_the_same_inputs_awaiting_promotion_also_stops_the_run(registry):
    """Registration gives the challenger alias; until someone promotes it, a schedule would train the
    same student every night without this."""
    uri, client = registry
    client.set_registered_model_alias("sched-student", "challenger", "1")
    out = decide_retraining(FINGERPRINT, TEACHER, CONFIG, uri, skip_unchanged=True)
    assert not out["retrain"]
    assert out["reason"].startswith("sched-student has no champion yet, but sched-student version 1 "
                                    "(@challenger) was trained from these inputs and awaits promotion")
    out = decide_retraining("e" * 64, TEACHER, CONFIG, uri, skip_unchanged=True)
    assert out == {"retrain": True, "reason": "sched-student has no champion yet"}


def test_steps_use_the_tracking_servers_registry_whatever_the_environment_says(tmp_path, monkeypatch):
    """A pod (or a test session) may carry MLFLOW_REGISTRY_URI for another server: registration and
    the champion check must use the registry of the run's own tracking URI."""
    import mlflow

    from kdflow.registry import tracking

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:9")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use_tracking(uri)
    assert mlflow.get_registry_uri() == uri
