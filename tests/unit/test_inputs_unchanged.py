"""KFP's cache keys preprocess and the teacher steps on content digests taken when the run starts; each
step checks that what it reads still has that digest, so a cache entry never holds other content."""

import pytest

from kdflow.data.source import source_fingerprint
from kdflow.util.errors import DataError, KdflowError
from kdflow.models.loading import TeacherSource
from kdflow.steps.fingerprint import fingerprint_inputs
from kdflow.steps.preprocess import run_preprocess
from kdflow.steps.teacher import run_teacher_inference


def test_fingerprint_inputs_digests_data_teacher_and_config(tiny_data, tiny_teacher, tiny_config_yaml):
    out = fingerprint_inputs(str(tiny_data), tiny_teacher, tiny_config_yaml, None)
    assert out["source_fingerprint"] == source_fingerprint(str(tiny_data))
    assert out["teacher_digest"] == TeacherSource(tiny_teacher, "convnet_s").digest()
    assert len(out["config_hash"]) == 64


def test_preprocess_refuses_a_folder_changed_since_the_run_started(tmp_path, tiny_data, tiny_config_yaml):
    expected = source_fingerprint(str(tiny_data))
    ok = run_preprocess(str(tiny_data), tiny_config_yaml, str(tmp_path / "ok"), expected)
    assert ok["counts"]["train"] > 0
    with pytest.raises(DataError, match="changed after the run started"):
        run_preprocess(str(tiny_data), tiny_config_yaml, str(tmp_path / "bad"), "0" * 64)
    assert not (tmp_path / "bad" / "manifest.json").exists()


def test_teacher_inference_refuses_a_teacher_replaced_since_the_run_started(tmp_path, tiny_data, tiny_teacher,
                                                                           tiny_config_yaml):
    run_preprocess(str(tiny_data), tiny_config_yaml, str(tmp_path / "ds"))
    with pytest.raises(KdflowError, match="changed after the run started"):
        run_teacher_inference(str(tmp_path / "ds"), tiny_teacher, tiny_config_yaml, str(tmp_path / "cache"),
                              str(tmp_path / "ref"), expected_digest="0" * 64)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))
    digest = TeacherSource(tiny_teacher, "convnet_s").digest()
    ref = run_teacher_inference(str(tmp_path / "ds"), tiny_teacher, tiny_config_yaml, str(tmp_path / "cache"),
                                str(tmp_path / "ref"), expected_digest=digest)
    assert ref.teacher_digest == digest


def test_an_mlflow_teacher_is_read_through_the_tracking_uri_parameter(tmp_path, tiny_data, tiny_teacher,
                                                                      tiny_config_yaml, monkeypatch):
    """On a cluster the URI may come from the run's tracking_uri parameter rather than the pod's
    environment: the teacher steps read a models:/ teacher through it."""
    import mlflow

    from kdflow.registry import tracking
    from kdflow.models.loading import load_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.use_tracking(uri)
    model, _ = load_checkpoint(open(tiny_teacher, "rb").read())
    with mlflow.start_run(experiment_id=tracking.experiment_id("teachers", uri)):
        model_uri = tracking.log_model(model.eval(), (3, 12, 12))
    version = mlflow.register_model(model_uri, "param-teacher").version
    mlflow.set_tracking_uri("sqlite:///" + str(tmp_path / "elsewhere.db"))  # the process default points elsewhere
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_preprocess(str(tiny_data), tiny_config_yaml, str(tmp_path / "ds"))
    ref = run_teacher_inference(str(tmp_path / "ds"), f"models:/param-teacher/{version}", tiny_config_yaml,
                                str(tmp_path / "cache"), str(tmp_path / "ref"), tracking_uri=uri)
    assert not ref.cache_hit and len(ref.teacher_digest) == 64
