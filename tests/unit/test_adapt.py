"""Teacher adaptation: fine-tune the given teacher on the train split, once, and hand it on."""

import pytest
import torch
import yaml

from kdflow.config import Config
from kdflow.util.errors import KdflowError
from kdflow.models.loading import TeacherSource, load_checkpoint
from kdflow.steps import adapt
from kdflow.training import supervised


def _config(tiny_config_yaml, **teacher):
    data = yaml.safe_load(tiny_config_yaml)
    data["teacher"].update(teacher)
    return yaml.safe_dump(data)


@pytest.fixture()
def dataset_dir(tiny_labelled):
    return str(tiny_labelled.dataset)  # read only: adaptation writes to the cache it is given


def test_off_by_default_hands_the_teacher_on_unchanged(dataset_dir, tiny_teacher, tiny_config_yaml, tmp_path):
    assert Config().teacher.adapt_epochs == 0
    out = adapt.run_adaptation(dataset_dir, tiny_teacher, tiny_config_yaml, str(tmp_path / "cache"))
    assert out == {"teacher_uri": tiny_teacher, "adapted": False, "reused": False}
    assert not (tmp_path / "cache").exists()


def test_adapts_once_then_reuses(dataset_dir, tiny_teacher, tiny_config_yaml, tmp_path, monkeypatch):
    config = _config(tiny_config_yaml, adapt_epochs=2, adapt_lr=0.02)
    out = adapt.run_adaptation(dataset_dir, tiny_teacher, config, str(tmp_path / "cache"))
    assert out["adapted"] and not out["reused"] and out["teacher_uri"].startswith(str(tmp_path / "cache"))
    before, _ = load_checkpoint(open(tiny_teacher, "rb").read())
    after, arch = load_checkpoint(open(out["teacher_uri"], "rb").read())
    assert arch == "convnet_s"
    assert any(not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values()))
    # The adapted teacher is a new teacher: its digest (and so every soft-label key) differs.
    assert TeacherSource(out["teacher_uri"]).digest() != TeacherSource(tiny_teacher).digest()
    assert 0 <= out["val_accuracy_after"] <= 1

    # The step imports the trainer when it runs (lazily): patch it where it lives.
    monkeypatch.setattr(supervised, "train_supervised", lambda *a, **k: pytest.fail("trained again"))
    again = adapt.run_adaptation(dataset_dir, tiny_teacher, config, str(tmp_path / "cache"))
    assert again == {"teacher_uri": out["teacher_uri"], "adapted": True, "reused": True}
    # The student's own training settings do not make another teacher (one cache for every seed)...
    data = yaml.safe_load(config)
    data["train"].update(seed=7, batch_size=4, lr=0.3)
    assert adapt.run_adaptation(dataset_dir, tiny_teacher, yaml.safe_dump(data), str(tmp_path / "cache")) == again
    # ...other fine-tuning settings do.
    other = _config(tiny_config_yaml, adapt_epochs=1, adapt_lr=0.02)
    monkeypatch.setattr(supervised, "train_supervised", lambda model, *a, **k: model)
    assert adapt.run_adaptation(dataset_dir, tiny_teacher, other, str(tmp_path / "cache"))["teacher_uri"] != \
        out["teacher_uri"]


def test_a_teacher_for_other_classes_is_refused_before_training(dataset_dir, tiny_config_yaml, tmp_path):
    from kdflow.models import Classifier, create_model
    from kdflow.models.loading import save_checkpoint

    path = tmp_path / "five.pt"
    path.write_bytes(save_checkpoint(Classifier(create_model("convnet_xs", 5), (0.5,) * 3, (0.25,) * 3),
                                     "convnet_xs", 5))
    with pytest.raises(KdflowError, match="outputs .5,. logits but the dataset has 3 classes"):
        adapt.run_adaptation(dataset_dir, str(path), _config(tiny_config_yaml, adapt_epochs=1), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()


def test_a_torchscript_teacher_cannot_be_adapted(dataset_dir, tiny_teacher, tiny_config_yaml, tmp_path):
    model, _ = load_checkpoint(open(tiny_teacher, "rb").read())
    path = tmp_path / "t.ts"
    torch.jit.save(torch.jit.trace(model.eval(), torch.rand(1, 3, 12, 12)), str(path))
    with pytest.raises(KdflowError, match=r"(?s)torchscript model.*teacher.adapt_epochs: 0"):
        adapt.run_adaptation(dataset_dir, str(path), _config(tiny_config_yaml, adapt_epochs=1), str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
