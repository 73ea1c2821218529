"""The bad-input matrix, continued: teachers that do not fit the data, checkpoints that need pickle,
hostile class names through the pipeline's steps, bad configs and bad schedules.

Each case runs the real step (or the CLI in a subprocess) and checks the error names the problem
and the fix, and that nothing was written: no soft-label cache entry, no reference, no marker.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdflow.config import Config
from kdflow.cluster.cron import CronError, validate
from kdflow.data.shards import DatasetManifest
from kdflow.util.errors import ConfigError, KdflowError
from kdflow.models.loading import TeacherSource
from kdflow.steps.fingerprint import fingerprint_inputs
from kdflow.steps.preprocess import run_preprocess
from kdflow.steps.teacher import run_teacher_inference
from tests.helpers import ROOT, class_image, hang_guard, png_bytes

CONFIG = """
data: {image_size: %d, val_fraction: 0.2, test_fraction: 0.2, seed: 0}
teacher: {batch_size: 32}
augment: {crop: none}
student: {arch: convnet_xs}
train: {epochs: 1, batch_size: 8}
gate: {min_teacher_accuracy: 0.0}
registry: {model_name: bad-input, experiment: bad-input}
evaluate: {export: []}
"""


def _folder(root: Path, classes, n: int = 5, size: int = 12) -> Path:
    for li, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i:03d}.png").write_bytes(png_bytes(class_image(li, seed=li * 100 + i, size=size)))
    return root


def _scripted(model: nn.Module, path: Path) -> str:
    torch.jit.save(torch.jit.script(model.eval()), str(path))
    return str(path)


def _any_size_teacher(path: Path, classes: int) -> str:
    """A TorchScript teacher that takes any picture size: global average pool, then a linear head."""
    return _scripted(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, classes)), path)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


# --- a teacher that does not fit the data: refused before anything is labelled -----------------------

@pytest.mark.parametrize("case", ["class count", "input size"])
def test_a_teacher_that_does_not_fit_the_data_is_refused_before_labelling(tmp_path, case):
    size = 8
    if case == "class count":  # a 3-class teacher, 2 class folders
        teacher = _any_size_teacher(tmp_path / "t.pt", classes=3)
        names, problem = ("apple", "kiwi"), r"outputs \(3,\) logits but the dataset has 2 classes"
        fix = "trained on these classes"
    else:  # a teacher with a fixed 12 x 12 input, data at 8 x 8
        teacher = _scripted(nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 3)), tmp_path / "t.pt")
        names, problem, fix = ("apple", "kiwi", "plum"), "cannot run on 8x8 RGB images", "data.image_size"
    config = CONFIG % size
    run_preprocess(str(_folder(tmp_path / "data", names)), config, str(tmp_path / "ds"))
    with pytest.raises(KdflowError) as err:
        run_teacher_inference(str(tmp_path / "ds"), teacher, config, str(tmp_path / "cache"), str(tmp_path / "ref"))
    assert re.search(problem, err.value.problem), err.value.problem
    assert fix in err.value.fix
    assert _files(tmp_path / "cache") == [] and _files(tmp_path / "ref") == []


# --- checkpoints that need pickle ---------------------------------------------------------------------

class _Planted:
    """Unpickling this runs os.mkdir(marker): what a hostile checkpoint would do with a shell."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_that_needs_pickle_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "planted.pt"
    weights = nn.Linear(3, 3).state_dict()
    torch.save({"state_dict": weights, "extra": _Planted(str(marker))}, path)
    data = _folder(tmp_path / "data", ("apple", "kiwi", "plum"))
    config = CONFIG % 12
    # The pipeline's first step reads the teacher (its digest keys the cache): the refusal comes there.
    with pytest.raises(ConfigError) as err:
        fingerprint_inputs(str(data), str(path), config, None)
    assert "only full pickle can load" in err.value.problem and "posix.mkdir" in err.value.problem
    assert "teacher.trust_pickle is false" in err.value.problem
    assert "set teacher.trust_pickle: true" in err.value.fix and "state_dict()" in err.value.fix
    run_preprocess(str(data), config, str(tmp_path / "ds"))
    with pytest.raises(ConfigError, match="trust_pickle"):
        run_teacher_inference(str(tmp_path / "ds"), str(path), config, str(tmp_path / "cache"), str(tmp_path / "ref"))
    assert not marker.exists()
    assert _files(tmp_path / "cache") == [] and _files(tmp_path / "ref") == []
    # Trusted explicitly, it is loaded with full pickle: the planted code runs (the proof of which
    # loader read it), which is exactly why that takes the user's word.
    trusted = TeacherSource.of(str(path), Config.from_yaml("teacher: {trust_pickle: true}").teacher)
    assert trusted.trust_pickle and trusted.kind() == "state_dict"
    assert marker.is_dir()


def test_a_whole_pickled_model_loads_only_when_trusted(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4)), path)
    with pytest.raises(ConfigError, match="only full pickle can load"):
        TeacherSource(str(path)).load((0.5,) * 3, (0.25,) * 3)
    teacher = TeacherSource(str(path), trust_pickle=True).load((0.5,) * 3, (0.25,) * 3)
    assert teacher(torch.rand(2, 3, 12, 12)).shape == (2, 4)


# --- class names with spaces, unicode and shell characters through the steps --------------------------

HOSTILE_NAMES = ("a b", "ünï 字", "$(touch pwned);'x")


def test_hostile_class_names_go_through_preprocess_teacher_and_distillation(tmp_path, monkeypatch):
    from kdflow.softlabels.ref import SoftLabelRef
    from kdflow.steps.distill import STUDENT_FILE, run_distillation

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where a shell would have run `touch pwned`
    data = _folder(tmp_path / "data", HOSTILE_NAMES)
    (data / HOSTILE_NAMES[2] / "$(touch pwned).png").write_bytes(png_bytes(class_image(2, seed=4242)))
    config = CONFIG % 12
    summary = run_preprocess(str(data), config, str(tmp_path / "ds"))
    dataset = DatasetManifest.open(str(tmp_path / "ds"))
    assert dataset.class_names == tuple(sorted(HOSTILE_NAMES))
    assert sum(summary["counts"].values()) == 16 and summary["dropped"] == 0
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["class_names"] == sorted(HOSTILE_NAMES)  # stored as given, not escaped away
    teacher = _any_size_teacher(tmp_path / "t.pt", classes=3)
    run_teacher_inference(str(tmp_path / "ds"), teacher, config, str(tmp_path / "cache"), str(tmp_path / "ref"))
    assert SoftLabelRef.load(str(tmp_path / "ref")).cache_key
    result = run_distillation(str(tmp_path / "ds"), str(tmp_path / "ref"), config, str(tmp_path / "out"),
                              f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert (tmp_path / "out" / STUDENT_FILE).exists() and result["run_id"]
    for where in (tmp_path, cwd, Path(ROOT), Path.home()):
        assert not (where / "pwned").exists(), where
    assert not [p for p in tmp_path.rglob("pwned*")]


# --- configs and schedules ---------------------------------------------------------------------------

BAD_CONFIGS = [
    # (yaml, what the problem must name)
    ("data: {max_file_byte: 5}", "data.max_file_byte"),
    ("data: {max_file_bytes: lots}", "data.max_file_bytes"),
    ("data: {max_file_bytes: -1}", "data.max_file_bytes"),
    ("teacher: {trust_pickle: sure}", "teacher.trust_pickle"),
    ("teacher: {trust_pickles: true}", "teacher.trust_pickles"),
    ("dataa: {image_size: 8}", "dataa"),
    ("data: [1, 2]", "data"),
    ("train: {epochs: 2.5}", "train.epochs"),
    ("data: {image_size: 8", "not valid YAML"),
]


@pytest.mark.parametrize("text,key", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_a_bad_config_names_the_key_and_the_fix(text, key):
    with pytest.raises(ConfigError) as err:
        Config.from_yaml(text)
    assert key in err.value.problem and err.value.fix


BAD_CRONS = [
    # (expression, what the problem says, what the fix says)
    ("0 3 * * *", "has five fields", '"0 0 3 * * *"'),
    ("0 0 3 * * * 2025", "has 7 fields", "six fields"),
    ("every day at 3", "has 4 fields", "six fields"),
    ("; rm -rf /", "has 4 fields", "six fields"),
    ("$(reboot) 0 3 * * *", 'second field "$(reboot)": "$(reboot)" is not a number', "use values in range"),
    ("", "is empty", "six fields"),
    ("0 0 25 * * *", "hour field", "0-23"),
    ("0 0 3 * * 7", "day-of-week", "0 = Sunday"),
    ("0 0 0 30 2 *", "never fires", "30 February"),
    ("@sometimes", "unknown cron descriptor", "@daily"),
]


@pytest.mark.parametrize("expr,problem,fix", BAD_CRONS, ids=[c[0] or "empty" for c in BAD_CRONS])
def test_a_bad_cron_expression_names_the_problem_and_the_fix(expr, problem, fix):
    with pytest.raises(CronError) as err:
        validate(expr)
    assert problem in err.value.problem and fix in err.value.fix, (err.value.problem, err.value.fix)


@pytest.mark.parametrize("args,problem,fix", [
    (["config", "--config", "{bad}"], "config key 'data.max_file_bytes'", "fix: use a size in bytes"),
    (["schedule", "--host", "http://127.0.0.1:9", "--cron", "0 3 * * *"], "has five fields",
     'fix: write it with a seconds field first: "0 0 3 * * *"'),
], ids=["config", "cron"])
def test_the_cli_refuses_bad_input_with_exit_2_before_connecting_anywhere(tmp_path, args, problem, fix):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {max_file_bytes: -5}\n")
    proc = subprocess.run([sys.executable, "-c", "from kdflow.cli import entrypoint; entrypoint()",
                           *[a.replace("{bad}", str(bad)) for a in args]], cwd=tmp_path, capture_output=True,
                          text=True, timeout=hang_guard(300), env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2, proc.stderr
    assert problem in proc.stderr and fix in proc.stderr and "Traceback" not in proc.stderr
