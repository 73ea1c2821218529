"""train.compile is skipped where compiled code cannot work (a compiled student that trains and loads
uncompiled: tests/integration/test_compile.py)."""

from __future__ import annotations

import torch

from kdflow.config import TrainConfig
from kdflow.distillers import build_distiller, get_distiller_class
from kdflow.models import Classifier, create_model
from kdflow.training.batches import ArrayBatches
from kdflow.training.trainer import fit
from tests.helpers import class_arrays as _arrays


def test_compile_is_skipped_for_feature_taps(caplog):
    """Feature distillers read layers through forward hooks, which compiled code does not call."""

    torch.manual_seed(0)
    student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
    teacher = Classifier(create_model("convnet_s", 3), (0.5,) * 3, (0.25,) * 3)
    options = get_distiller_class("hint").Options.from_dict(
                        {"pairs": [{"teacher": "stages.1", "student": "stages.0", "weight": 1.0}]})
    distiller = build_distiller("hint", student, teacher, options)
    cfg = TrainConfig(epochs=1, batch_size=12, seed=1).replace(compile=True)
    fit(distiller, ArrayBatches(_arrays(), cfg.batch_size, torch.device("cpu")), cfg)
    assert "train.compile is ignored" in caplog.text and distiller.student is student
