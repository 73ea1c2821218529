"""Online distillation (``distill.teacher: online``) with each kind of teacher kdflow accepts.

The teacher runs in the training loop on the same augmented batch as the student. An MLflow
``models:/`` teacher is a torch.export program whose module refuses train()/eval(); it must work too.
Tracking goes to a SQLite MLflow store (the registry included), no server needed.
"""

from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml

from kdflow.config import Config
from kdflow.data.shards import DatasetManifest
from kdflow.models.loading import Frozen, load_checkpoint
from kdflow.steps.distill import run_distillation
from kdflow.steps.teacher import run_teacher_inference

pytestmark = pytest.mark.e2e

ONLINE = "\ndistill: {method: kd, teacher: online, options: {temperature: 4.0, alpha: 0.9}}\n"


def _teacher(kind: str, tiny_teacher: str, tmp_path, tracking_uri: str) -> tuple[str, str]:
    """(teacher URI, config lines) for ``kind``, all made from the same trained tiny teacher."""
    model, arch = load_checkpoint(open(tiny_teacher, "rb").read())
    model.eval()
    if kind == "torchscript":
        path = tmp_path / "teacher.ts"
        torch.jit.save(torch.jit.trace(model.net, torch.rand(1, 3, 12, 12)), str(path))
        mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
        return str(path), f"teacher: {{mean: {mean}, std: {std}}}"
    if kind == "state_dict":
        path = tmp_path / "teacher.th"
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.net.state_dict().items()}}, str(path))
        mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
        return str(path), f"teacher: {{arch: {arch}, mean: {mean}, std: {std}}}"
    from kdflow.registry import tracking

    tracking.use_tracking(tracking_uri)
    with mlflow.start_run(experiment_id=tracking.experiment_id("teachers", tracking_uri)):
        model_uri = tracking.log_model(model, (3, 12, 12))
    version = mlflow.register_model(model_uri, "tiny-teacher")
    return f"models:/tiny-teacher/{version.version}", "teacher: {}"


@pytest.mark.parametrize("kind", ["torchscript", "state_dict", "mlflow"])
def test_online_kd_with_every_teacher_kind(kind, tmp_path, tiny_labelled, tiny_teacher, tiny_config_yaml,
                                           monkeypatch):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)  # where a models:/ teacher is looked up
    teacher_uri, teacher_lines = _teacher(kind, tiny_teacher, tmp_path, tracking_uri)
    base = yaml.safe_load(tiny_config_yaml)
    text = yaml.safe_dump({**base, **yaml.safe_load(teacher_lines), **yaml.safe_load(ONLINE),
                           "train": {**base["train"], "epochs": 10}})
    cfg = Config.from_yaml(text)
    assert cfg.cached_views() == 0 and not cfg.replays_cache()
    ds = str(tiny_labelled.dataset)  # the tiny data, preprocessed with these data settings (read only)
    ref = run_teacher_inference(ds, teacher_uri, text, str(tmp_path / "cache"), str(tmp_path / "ref"))
    assert ref.views == 0  # online: only the plain view is cached (for validation and evaluation)

    calls, shown = [], []
    real_forward = Frozen.forward

    def recording_forward(self, x):
        calls.append(len(x))
        shown.extend(x.clone())
        return real_forward(self, x)

    monkeypatch.setattr(Frozen, "forward", recording_forward)
    result = run_distillation(ds, str(tmp_path / "ref"), text, str(tmp_path / "out"), tracking_uri)

    steps = 10 * (39 // cfg.train.batch_size)  # tiny_data has 39 training images
    assert len(calls) == steps and set(calls) == {cfg.train.batch_size}  # one teacher pass per batch
    # ...on the augmented pictures the student trains on, not the plain ones.
    plain = DatasetManifest.open(ds).load_split("train").images
    plain = {p.tobytes() for p in torch.from_numpy(plain).permute(0, 3, 1, 2).float().div(255).numpy()}
    assert sum(p.numpy().tobytes() not in plain for p in shown) > 0.8 * len(shown)
    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["kdflow.teacher_mode"] == "online"
    assert 0 < run.data.metrics["train_kd"] < 10 and run.data.metrics["val_agreement"] > 0.5


HINT = {"method": "hint", "options": {"pairs": [{"teacher": "stages.1", "student": "stages.1", "weight": 1.0}]}}


@pytest.mark.parametrize("kind", ["torchscript", "state_dict", "mlflow"])
def test_hint_reads_the_layers_of_every_teacher_kind(kind, tmp_path, tiny_labelled, tiny_teacher, tiny_config_yaml,
                                                     monkeypatch):
    """Forward hooks need eager modules: a compiled teacher (TorchScript, an exported models:/ program)
    is refused with the fix until teacher.arch is named, then rebuilt from its weights."""
    from kdflow.util.errors import KdflowError

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    teacher_uri, teacher_lines = _teacher(kind, tiny_teacher, tmp_path, tracking_uri)
    base = yaml.safe_load(tiny_config_yaml)
    teacher_cfg = {**base["teacher"], **yaml.safe_load(teacher_lines)["teacher"]}
    teacher_cfg.pop("arch")
    doc = {**base, "teacher": teacher_cfg, "distill": HINT, "train": {**base["train"], "epochs": 2},
           "registry": {**base["registry"], "experiment": f"hint-{kind}"}}
    if kind == "state_dict":
        doc["teacher"]["arch"] = "convnet_s"
    ds = str(tiny_labelled.dataset)
    run_teacher_inference(ds, teacher_uri, yaml.safe_dump(doc), str(tmp_path / "cache"),
                          str(tmp_path / "ref"))
    if kind != "state_dict":
        with pytest.raises(KdflowError, match="compiled code") as err:
            run_distillation(ds, str(tmp_path / "ref"), yaml.safe_dump(doc), str(tmp_path / "x"),
                             tracking_uri)
        assert "teacher.arch" in err.value.fix
        assert mlflow.get_experiment_by_name(f"hint-{kind}") is None or not mlflow.search_runs(
            experiment_names=[f"hint-{kind}"]).shape[0]  # a refused run leaves no MLflow run behind
        doc["teacher"]["arch"] = "convnet_s"
    result = run_distillation(ds, str(tmp_path / "ref"), yaml.safe_dump(doc), str(tmp_path / "out"),
                              tracking_uri, pipeline_run=f"online-{kind}")
    run = mlflow.get_run(result["run_id"])
    assert run.data.tags["kdflow.teacher_mode"] == "online" and run.data.metrics["train_hint"] > 0
    # The student that is saved and logged has no connector.
    from kdflow.models import create_model

    bare = set(create_model("convnet_xs", 3).state_dict())  # the student's architecture, nothing more
    saved = torch.load(tmp_path / "out" / "student.pt", weights_only=True)["state_dict"]
    assert set(saved) == bare
    logged = mlflow.pytorch.load_model(result["model_uri"])
    assert set(logged.state_dict()) == {f"net.{k}" for k in bare} | {"mean", "std"}
    # ...while training did build and train a connector (it is in the training checkpoint).
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["student.pt"]  # no checkpoint in the model
    checkpoint = torch.load(Path(result["checkpoints"]) / "last.pt", weights_only=True)["model"]
    assert any(k.startswith("connectors.0.proj.0") for k in checkpoint)
