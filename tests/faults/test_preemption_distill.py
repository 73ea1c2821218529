"""Preemption of the distillation step: killed (SIGKILL) at several points and started again as a KFP
retry starts it (same pipeline run, same inputs, a NEW empty output folder), it resumes from its last
checkpoint and ends with the student of a run that was never interrupted, in one MLflow run.

Real processes: each attempt is ``run_distillation`` in a fresh interpreter (``drive`` below). The
kill points are reached by observing the attempt (lines it prints when it checkpoints, starts its
MLflow run or is about to log the model), never by sleeping: at a "pause" point the attempt stops and
waits to be killed; in the "any" attempt it goes on training and the kill lands wherever it lands
(possibly after the run finished), which the assertions must not care about.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from kdflow.registry.tags import Tag
from kdflow.config import Config
from kdflow.util.errors import StorageError
from kdflow.data.shards import DatasetManifest
from kdflow.softlabels.ref import SoftLabelRef
from kdflow.steps.distill import STUDENT_FILE, DistillRun, run_distillation, run_identity
from kdflow.training import checkpoints
from kdflow.training.checkpoints import CHECKPOINT, CheckpointError
from tests.helpers import hang_guard

ROOT = Path(__file__).resolve().parents[2]
HANG_S = 300  # a guard against a hung attempt (hang_guard scales it), not a speed limit: past it the test fails
MARK = "@@"


def _config(tiny_config_yaml: str, **train) -> str:
    doc = yaml.safe_load(tiny_config_yaml)
    # ~36 training images, batch 8: 4-5 steps an epoch, a checkpoint every 2 (mid-epoch ones too).
    doc["train"].update({"epochs": 3, "batch_size": 8, "checkpoint_every_steps": 2, "device": "cpu", **train})
    return yaml.safe_dump(doc)


def drive(spec_json: str) -> None:
    """One attempt of the step (run in a subprocess). Prints ``@@<event>`` lines as it goes; at the
    event named by ``pause`` it waits to be killed. Writes the step's result to ``result``."""
    spec = json.loads(spec_json)
    import kdflow.training.trainer as trainer
    from kdflow.registry import tracking

    def mark(event: str) -> None:
        print(MARK + event, flush=True)

    def hold(event: str) -> None:
        if spec["pause"] == event:
            mark("paused " + event)
            while True:
                signal.pause()  # until the SIGKILL

    real_save, real_log_config, real_log_model = trainer._save, tracking.log_config, tracking.log_model
    real_set_tags = tracking.set_tags

    def save(uri, state):
        if not state["step"]:  # an epoch's end: its metrics are logged, its checkpoint is not written yet
            hold("ending")
        real_save(uri, state)
        mark(f"saved {state['epoch']} {state['step']}")
        hold("mid" if state["step"] else "end")

    def log_config(cfg):  # the first thing after the MLflow run is started
        real_log_config(cfg)
        mark("started")
        hold("started")

    def log_model(*args, **kwargs):  # training is over and student.pt written; the model is not logged yet
        hold("model")
        return real_log_model(*args, **kwargs)

    def set_tags(tags):  # the model is logged and recorded on the run; the step has not returned
        real_set_tags(tags)
        if Tag.MODEL_URI in tags:
            mark("logged")
            hold("logged")

    trainer._save, tracking.log_config, tracking.log_model, tracking.set_tags = save, log_config, log_model, set_tags
    result = run_distillation(spec["dataset"], spec["ref"], spec["config"], spec["out"], spec["tracking"],
                              pipeline_run=spec["pipeline_run"])
    Path(spec["result"]).write_text(json.dumps({k: result[k] for k in ("run_id", "model_uri", "checkpoints")}))
    mark("done")


def _attempt(spec: dict, kill_on: str | None) -> list[str]:
    """Run one attempt; SIGKILL it at the first event starting with ``kill_on`` (None: let it finish,
    which it must). Returns the events it printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    code = f"from tests.faults.test_preemption_distill import drive; drive({json.dumps(spec)!r})"
    log_path = Path(spec["out"] + ".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=log, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout] + [lines.put(None)], daemon=True).start()
    events = []
    try:
        while True:
            line = lines.get(timeout=hang_guard(HANG_S))
            if line is None:
                break
            if line.startswith(MARK):
                events.append(line[len(MARK):].strip())
                if kill_on is not None and events[-1].startswith(kill_on):
                    proc.send_signal(signal.SIGKILL)
                    break
    except queue.Empty:
        pytest.fail(f"attempt hung: {events}\n{log_path.read_text()[-3000:]}")
    finally:
        if proc.poll() is None and kill_on is None:
            proc.kill()
        proc.wait(timeout=hang_guard(HANG_S))
    if kill_on is None:
        assert proc.returncode == 0 and events[-1] == "done", log_path.read_text()[-3000:]
    elif proc.returncode == 0:
        assert kill_on == "saved"  # only the unpaused attempt may finish before its kill lands
    else:
        assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]
    return events


def _position(event: str) -> tuple[int, int]:
    """(last epoch done, steps into the next) of a "saved" event: tuples order like the training."""
    _, epoch, step = event.split()
    return int(epoch), int(step)


@pytest.fixture(scope="module")
def prepared(tiny_labelled, tiny_config_yaml, tmp_path_factory):
    """The dataset, its soft labels in a local cache (a copy of the shared ones: the checkpoints go
    beside the cache), an empty MLflow store to copy (creating one costs seconds of migrations), and
    the uninterrupted reference run of the same step (in this process: the attempts get its number of
    threads, so the same kernels sum in the same order)."""
    root = tmp_path_factory.mktemp("preemption")
    text = _config(tiny_config_yaml)
    tiny_labelled.copy_to(root)  # root/ds, root/cache, root/ref
    mlflow.MlflowClient(f"sqlite:///{root / 'empty.db'}").search_experiments()  # creates the tables
    straight = _spec(root, "straight", text, 0)
    result = run_distillation(straight["dataset"], straight["ref"], text, straight["out"], straight["tracking"],
                              pipeline_run=straight["pipeline_run"])
    return root, text, result


def _spec(root: Path, name: str, text: str, attempt: int, pause: str | None = None) -> dict:
    if not (root / name).exists():
        (root / name).mkdir()
        shutil.copy(root / "empty.db", root / name / "mlflow.db")
    return {"dataset": str(root / "ds"), "ref": str(root / "ref"), "config": text,
            "out": str(root / name / f"model-{attempt}"),  # a new, empty output folder each attempt
            "tracking": f"sqlite:///{root / name / 'mlflow.db'}", "pipeline_run": f"pipeline-{name}",
            "result": str(root / name / f"result-{attempt}.json"), "pause": pause}


def test_a_killed_step_resumes_to_the_weights_and_the_run_of_an_uninterrupted_one(prepared):
    root, text, straight = prepared
    # Killed after its MLflow run started (no checkpoint yet), after a mid-epoch checkpoint, after an
    # epoch's metrics were logged but before its checkpoint (the retry trains that epoch again), after an
    # epoch-end checkpoint, wherever the kill lands once it has checkpointed again (it goes on training:
    # the kill may even land after the end), after training ended (student.pt written to a folder
    # the retry never sees) but before the model was logged, and after the model was logged but before
    # the step returned. Then a last attempt finishes.
    kills = [("started", "paused"), ("mid", "paused"), ("ending", "paused"), ("end", "paused"), (None, "saved"),
             ("model", "paused"), ("logged", "paused")]
    events = [_attempt(_spec(root, "killed", text, i, pause), kill_on) for i, (pause, kill_on) in enumerate(kills)]
    final = _spec(root, "killed", text, len(kills))
    events.append(_attempt(final, None))
    result = json.loads(Path(final["result"]).read_text())

    # The same student, bit for bit (CPU), as the run that was never interrupted.
    reference = torch.load(root / "straight" / "model-0" / STUDENT_FILE, weights_only=True)["state_dict"]
    student = torch.load(Path(final["out"]) / STUDENT_FILE, weights_only=True)["state_dict"]
    assert set(student) == set(reference)
    for key, value in reference.items():
        assert torch.equal(student[key], value), key
    # Each attempt went on from the previous one's last checkpoint instead of starting over, and the
    # last one trained nothing more.
    assert any(_position(e)[1] for e in events[1] if e.startswith("saved"))  # a mid-epoch checkpoint
    done = (-1, 0)
    for attempt in events:
        saves = [_position(e) for e in attempt if e.startswith("saved")]
        if saves:
            assert saves[0] > done, events
            done = saves[-1]
    assert not [e for e in events[-1] if e.startswith("saved")], events
    # One MLflow run for the step, finished, with the figures of the uninterrupted run.
    client = mlflow.MlflowClient(final["tracking"])
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [result["run_id"]]
    assert runs[0].info.status == "FINISHED"
    reference_metrics = mlflow.MlflowClient(f"sqlite:///{root / 'straight' / 'mlflow.db'}").get_run(
        straight["run_id"]).data.metrics
    assert runs[0].data.metrics == pytest.approx(reference_metrics, rel=1e-12)
    # ... and the same history: an epoch trained again after a kill is not logged twice.
    reference_client = mlflow.MlflowClient(f"sqlite:///{root / 'straight' / 'mlflow.db'}")
    for name in reference_metrics:
        history = [(m.step, m.value) for m in client.get_metric_history(result["run_id"], name)]
        expected = [(m.step, m.value) for m in reference_client.get_metric_history(straight["run_id"], name)]
        assert [step for step, _ in sorted(history)] == [step for step, _ in sorted(expected)], name
        assert [v for _, v in sorted(history)] == pytest.approx([v for _, v in sorted(expected)], rel=1e-12), name
    # One logged model: the retry of a step lost after logging it reuses it.
    models = client.search_logged_models(experiment_ids=[runs[0].info.experiment_id])
    assert len(models) == 1 and result["model_uri"].endswith(models[0].model_id), (models, result)
    # Checkpoints at the cache's location, one per pipeline run; none in any model artifact.
    assert result["checkpoints"].startswith(str(root / "cache" / "checkpoints") + "/")
    assert (Path(result["checkpoints"]) / CHECKPOINT).exists() and result["checkpoints"] != straight["checkpoints"]
    assert sorted(p.name for p in Path(final["out"]).iterdir()) == [STUDENT_FILE]
    for folder in (root / "killed").glob("model-*"):  # the killed attempts' too: student.pt or nothing
        assert all(p.name == STUDENT_FILE for p in folder.rglob("*")) if folder.is_dir() else True, folder


def _identity_of(root: Path, text: str, pipeline_run: str) -> dict:
    cfg = Config.from_yaml(text)
    dataset, ref = DatasetManifest.open(str(root / "ds")), SoftLabelRef.load(str(root / "ref"))
    return run_identity(dataset, ref, cfg, DistillRun(pipeline_run=pipeline_run), 1)


def _planted(root: Path, text: str, pipeline_run: str, source: str) -> Path:
    """The reference run's last.pt, copied by hand to where the step for ``text`` and ``pipeline_run``
    looks for its checkpoint."""
    target = Path(checkpoints.location(str(root / "cache"), _identity_of(root, text, pipeline_run))) / CHECKPOINT
    target.parent.mkdir(parents=True)
    shutil.copy(Path(source) / CHECKPOINT, target)
    return target


def test_a_checkpoint_of_another_config_is_refused(prepared, tiny_config_yaml):
    """Another lr has another location by construction; a checkpoint copied there by hand (or a hash
    collision) is still refused, naming what differs, before any MLflow run is started or resumed."""
    root, text, straight = prepared
    other = _config(tiny_config_yaml, lr=0.01)
    assert (checkpoints.location(str(root / "cache"), _identity_of(root, other, "pipeline-straight"))
            != straight["checkpoints"])
    target = _planted(root, other, "pipeline-straight", straight["checkpoints"])
    with pytest.raises(CheckpointError, match="belongs to another run") as err:
        run_distillation(str(root / "ds"), str(root / "ref"), other, str(root / "other" / "model"),
                         f"sqlite:///{root / 'other.db'}", pipeline_run="pipeline-straight")
    assert "run.config " in err.value.problem and "run.config_hash" in err.value.problem
    assert str(target) in err.value.fix
    assert not (root / "other.db").exists() and not (root / "other").exists()  # no run, no student


def test_a_torn_checkpoint_is_refused_naming_the_file_and_the_fix(prepared):
    root, text, straight = prepared
    path = _planted(root, text, "pipeline-torn", straight["checkpoints"])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cannot be read") as err:
        run_distillation(str(root / "ds"), str(root / "ref"), text, str(root / "torn" / "model"),
                         f"sqlite:///{root / 'torn.db'}", pipeline_run="pipeline-torn")
    assert str(path) in err.value.problem and f"delete {path}" in err.value.fix
    assert not (root / "torn.db").exists()


def test_fit_refuses_a_last_pt_of_another_run_or_schedule(tmp_path):
    """``fit`` itself never continues an arbitrary last.pt: the caller's identity and the schedule
    (epochs, steps per epoch, batch, processes, optimisation) must both match."""
    from kdflow.config import TrainConfig
    from kdflow.distillers import build_distiller, get_distiller_class
    from kdflow.models import Classifier, create_model
    from kdflow.training.batches import ArrayBatches
    from kdflow.training.trainer import fit
    from tests.helpers import class_arrays

    cfg = TrainConfig(epochs=2, batch_size=12, lr=0.05, seed=1)

    def train(cfg, identity):
        torch.manual_seed(0)
        student = Classifier(create_model("convnet_xs", 3), (0.5,) * 3, (0.25,) * 3)
        distiller = build_distiller("ce", student, None, get_distiller_class("ce").Options())
        fit(distiller, ArrayBatches(class_arrays(), cfg.batch_size, torch.device("cpu")), cfg,
            checkpoint_dir=str(tmp_path), checkpoint_identity=identity)

    train(cfg, {"pipeline_run": "p1"})
    train(cfg, {"pipeline_run": "p1"})  # its own checkpoint: resumed (finished: nothing to train)
    with pytest.raises(CheckpointError, match=r"run\.pipeline_run \(checkpoint: p1, this run: p2\)"):
        train(cfg, {"pipeline_run": "p2"})
    with pytest.raises(CheckpointError, match=r"structure\.epochs \(checkpoint: 2, this run: 3\)"):
        train(cfg.replace(epochs=3), {"pipeline_run": "p1"})


@pytest.mark.parametrize("failure", [StorageError("S3 timed out reading last.pt", "retry"),
                                     PermissionError(13, "Permission denied")])
def test_a_checkpoint_storage_cannot_read_now_is_a_storage_error_not_a_broken_checkpoint(tmp_path, monkeypatch,
                                                                                        failure):
    """A checkpoint kdflow cannot read because storage fails (an S3 outage, a volume's permissions) is
    kept: the error is the storage's, never "cannot be read ... delete it", which would throw away
    the preempted run's progress."""
    from kdflow.storage.local import LocalStorage

    (tmp_path / CHECKPOINT).write_bytes(b"a checkpoint")

    def fail(self, uri):
        raise failure

    monkeypatch.setattr(LocalStorage, "read_bytes", fail)
    with pytest.raises(type(failure)) as err:
        checkpoints.read(str(tmp_path))
    assert not isinstance(err.value, CheckpointError)
    assert (tmp_path / CHECKPOINT).read_bytes() == b"a checkpoint"
