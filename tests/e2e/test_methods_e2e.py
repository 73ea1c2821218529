"""Every distillation method through the whole pipeline (kfp.local) on tiny generated data.

Each method runs preprocess -> teacher adaptation -> teacher inference -> distillation -> evaluation
-> registration; they share one soft-label cache, so the teacher labels the data once for all of
them (hint and combined-with-hint run the teacher online and read only the plain view).
"""

import pytest
import yaml

from kdflow.config import Config
from kdflow.cli.summary import read_summary
from kdflow.pipelines.local import run_local

pytestmark = pytest.mark.e2e

PAIRS = [{"teacher": "stages.1", "student": "stages.1", "weight": 1.0}]
METHODS = {
    "ce": {},
    "kd": {"temperature": 4.0, "alpha": 0.9, "logit_standardization": True},
    "dkd": {"warmup_epochs": 1},
    "dist": {},
    "hint": {"pairs": PAIRS},
    "combined": {"weights": {"dkd": 1.0, "hint": 0.5}, "methods": {"dkd": {"warmup_epochs": 1}, "hint": {"pairs": PAIRS}}},
}
TERMS = {"ce": "train_ce", "kd": "train_kd", "dkd": "train_nckd", "dist": "train_intra", "hint": "train_hint_0",
         "combined": "train_dkd_tckd"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    return {"cache": str(root / "cache"), "tracking": f"sqlite:///{root / 'mlflow.db'}", "root": root}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_through_the_pipeline(method, shared, tiny_data, tiny_teacher, tiny_config_yaml):
    from mlflow import MlflowClient

    doc = yaml.safe_load(tiny_config_yaml)
    doc["train"]["epochs"] = 2
    doc["distill"] = {"method": method, "options": METHODS[method]}
    doc["registry"] = {"model_name": f"student-{method}", "experiment": "methods"}
    cfg = Config.from_dict(doc)
    run_id = run_local(str(shared["root"] / method), {
        "data_uri": str(tiny_data), "teacher_uri": tiny_teacher, "config": cfg.to_yaml(),
        "cache_uri": shared["cache"], "tracking_uri": shared["tracking"]})
    summary = read_summary(run_id, shared["tracking"])
    assert summary.registered_model == f"student-{method}" and summary.registered_version == "1"
    client = MlflowClient(shared["tracking"], registry_uri=shared["tracking"])
    run = client.get_run(run_id)
    assert run.data.params["distill.method"] == method
    assert run.data.tags["kdflow.teacher_mode"] == cfg.teacher_mode()
    assert TERMS[method] in run.data.metrics and "test_student_accuracy" in run.data.metrics
    version = client.get_model_version_by_alias(f"student-{method}", "challenger")
    assert version.tags["kdflow.method"] == method
