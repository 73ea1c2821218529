"""Racing registrations and promotions: real processes, started together, against a real registry.

Each worker is a fresh Python process that imports kdflow, says it is ready and waits for a go file,
so the registrations really overlap (the imports, seconds long, are not what they race on). The
registry is the real ``mlflow server`` on loopback (artifacts in the S3 server), and a SQLite file
shared by the processes. The runs are what a distill run leaves for registration: a passing gate
verdict, a model folder (an MLmodel file is all registration looks at) and the per-sample test
predictions promotion compares.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdflow.registry.history import parse_events, replay
from kdflow.registry.lock import HOLDER_TAG, SINCE_TAG, lock_name, registry_lock
from kdflow.registry.aliases import CHAMPION
from kdflow.registry.tags import Tag
from tests.helpers import ROOT, hang_guard

# A worker still running after hang_guard(this) is stuck (a lost lock): fail, never wait forever. A guard
# only: a worker takes seconds on an idle machine, minutes on a loaded one.
HANG_GUARD_S = 300

WORKER = r"""
import json, sys, time
from pathlib import Path

barrier, me, run_id, uri, auto, config, guard = sys.argv[1:8]
import mlflow  # the slow imports, before the barrier
from mlflow import MlflowClient
from kdflow.steps.register import run_registration
from kdflow.registry import promotion
import logging


class Waiting(logging.Handler):  # tells the test this worker found the lock held and waits for it
    def emit(self, record):
        if "is held: waiting for it" in record.getMessage():
            Path(barrier, f"waiting-{me}").touch()


logging.getLogger("kdflow.registry.lock").addHandler(Waiting())

Path(barrier, f"ready-{me}").touch()
deadline = time.monotonic() + float(guard)  # the others may take minutes to import on a loaded machine
while not Path(barrier, "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.002)
result = run_registration(run_id, f"runs:/{run_id}/model", config, uri, auto_promote=auto == "1")
print("RESULT " + json.dumps(result))
"""

IDS = np.array([f"img{i:04d}" for i in range(200)])
LABELS = np.arange(200) % 10


def config(name: str) -> str:
    return f"registry: {{model_name: {name}}}\n"


def passing_run(uri: str, experiment: str) -> str:
    """A run as evaluation leaves it for registration: its config, gate passed, a model folder, test
    predictions (every student equally good, so each promotion passes the champion check against any
    other). The config matters on the server: promotion reads it, and MLflow retries a missing proxied
    artifact (the server answers 500) for minutes before giving up."""
    import mlflow

    from kdflow.config import Config
    from kdflow.registry import tracking
    from kdflow.evaluation.record import Predictions

    tracking.use_tracking(uri)
    with mlflow.start_run(experiment_id=tracking.experiment_id(experiment, uri)) as run:
        mlflow.log_text(Config().to_yaml(), "config.yaml")  # as tracking.log_config logs every distill run's
        mlflow.set_tags({Tag.GATE_PASSED: "true", Tag.GATE: "passed", Tag.PROMOTABLE: "true"})
        mlflow.log_text("flavors: {}\n", "model/MLmodel")  # what register_model looks for under runs:/
        top1 = np.where(np.arange(200) % 20 == 0, (LABELS + 1) % 10, LABELS)
        Predictions(IDS, LABELS, top1, "fp-race", tuple("0123456789")).log()
        return run.info.run_id


@pytest.fixture(params=["server", "sqlite"])
def registry_uri(request, tmp_path):
    """The real tracking server (one per session), or a SQLite file the processes share."""
    if request.param == "server":
        return request.getfixturevalue("mlflow_server")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def race(tmp_path: Path, uri: str, jobs: list[tuple[str, bool, str]], hold: str = "") -> list[dict]:
    """Run one worker per (run id, auto_promote, config) at once; their registration results.

    ``hold``: a model name whose lock the test takes before the workers go, and releases only once
    every worker has found it held and waits: then they certainly contend, whatever the scheduling."""
    barrier = tmp_path / f"barrier-{time.monotonic_ns()}"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": ROOT}
    guard = hang_guard(HANG_GUARD_S)
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(barrier), str(i), run_id, uri, "1" if auto else "0",
                               cfg, str(guard)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, (run_id, auto, cfg) in enumerate(jobs)]
    try:
        deadline = time.monotonic() + guard
        while len(list(barrier.glob("ready-*"))) < len(procs):
            dead = [p for p in procs if p.poll() is not None]
            assert not dead, dead[0].communicate()[1][-3000:]
            assert time.monotonic() < deadline, "workers did not get ready"
            time.sleep(0.05)
        if hold:
            client = client_of(uri)
            client.create_registered_model(lock_name(hold), tags={HOLDER_TAG: "the test",
                                                                  SINCE_TAG: f"{time.time():.3f}"})
        (barrier / "go").touch()  # all of them leave the barrier now
        if hold:
            while len(list(barrier.glob("waiting-*"))) < len(procs):
                dead = [p for p in procs if p.poll() is not None]
                assert not dead, dead[0].communicate()[1][-3000:]
                assert time.monotonic() < deadline, "workers never waited for the held lock"
                time.sleep(0.05)
            client.delete_registered_model(lock_name(hold))  # released: now they race for it
        outputs = [p.communicate(timeout=guard) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
        result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        result["_waited"] = "is held: waiting for it" in err  # kdflow.registry.lock logs its first wait
        results.append(result)
    return results


def client_of(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_registrations_of_one_run_at_once_make_one_version(tmp_path, registry_uri):
    name = f"race-same-{time.monotonic_ns() % 10**8}"
    run_id = passing_run(registry_uri, "race")
    workers = 4 if registry_uri.startswith("http") else 3  # fewer on SQLite: each is an interpreter start
    results = race(tmp_path, registry_uri, [(run_id, False, config(name))] * workers, hold=name)

    client = client_of(registry_uri)
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1, [(v.version, v.run_id) for v in versions]
    assert {r["version"] for r in results} == {str(versions[0].version)}  # every worker got that one
    assert all(r["_waited"] for r in results)  # they did contend: each found the lock held and waited
    assert versions[0].tags[Tag.RUN_ID] == run_id
    assert str(client.get_model_version_by_alias(name, "challenger").version) == str(versions[0].version)
    assert lock_name(name) not in {m.name for m in client.search_registered_models()}  # released


def test_registrations_and_promotions_of_different_runs_at_once_lose_nothing(tmp_path, registry_uri):
    name = f"race-diff-{time.monotonic_ns() % 10**8}"
    runs = [passing_run(registry_uri, "race") for _ in range(2)]
    results = race(tmp_path, registry_uri, [(run_id, True, config(name)) for run_id in runs])

    client = client_of(registry_uri)
    versions = client.search_model_versions(f"name='{name}'")
    numbers = [str(v.version) for v in versions]
    assert sorted(numbers) == ["1", "2"]  # one version per run, no number twice
    assert sorted(v.tags[Tag.RUN_ID] for v in versions) == sorted(runs)
    assert sorted(r["version"] for r in results) == ["1", "2"]
    # Every promotion is one event, numbered 1..n without a gap or a duplicate (none overwritten),
    # and the champion is the version the last event put there.
    events = parse_events(client.get_registered_model(name).tags)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sorted(e.version for e in events) == sorted(r["version"] for r in results if r["promoted"])
    assert events and all(r["promoted"] for r in results)  # equally good students: each promotion passes
    champion = str(client.get_model_version_by_alias(name, CHAMPION).version)
    assert replay(events)[-1] == champion == events[-1].version
    # Each event's "previous" is the champion the one before it made: the moves did not interleave.
    assert [e.previous for e in events] == [None] + [e.version for e in events[:-1]]
    # The registration alias is on one of the versions, and every version carries its own run's tags.
    assert str(client.get_model_version_by_alias(name, "challenger").version) in numbers
    assert lock_name(name) not in {m.name for m in client.search_registered_models()}


def test_a_dead_holders_lock_is_broken_and_a_live_one_waited_for(tmp_path, caplog):
    """A lock left by a process that died (older than the TTL) is broken with a warning; one held by
    a live holder makes a waiter give up after its timeout with the fix, and stays in place."""
    from kdflow.util.errors import KdflowError
    from kdflow.steps.register import run_registration

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = passing_run(uri, "race")
    client = client_of(uri)
    client.create_registered_model(lock_name("stale-student"),
                                   tags={HOLDER_TAG: "ghost@node pid 1 dead", SINCE_TAG: "0"})
    lock_log = logging.getLogger("kdflow.registry.lock")  # kdflow's loggers do not propagate to the root
    lock_log.addHandler(caplog.handler)
    try:
        result = run_registration(run_id, f"runs:/{run_id}/model", config("stale-student"), uri)
    finally:
        lock_log.removeHandler(caplog.handler)
    assert result["version"] == "1"
    assert "breaking the registry lock of stale-student held by ghost@node pid 1 dead" in caplog.text
    assert lock_name("stale-student") not in {m.name for m in client.search_registered_models()}

    with registry_lock(client, "busy-student") as holder:
        with pytest.raises(KdflowError) as refused:
            with registry_lock(client, "busy-student", timeout=0.3):
                pass
        assert f"is held by {holder}" in refused.value.problem and "delete the registered model" in refused.value.fix
        assert client.get_registered_model(lock_name("busy-student")).tags[HOLDER_TAG] == holder
    assert lock_name("busy-student") not in {m.name for m in client.search_registered_models()}
