"""S3 or MLflow unreachable when a step starts: a clear error naming the (redacted) URI and the fix,
from the real step or command in its own process, not a hang.

Two kinds of dead endpoint: a closed port (connection refused at once) and a port that accepts
connections but never answers (only a read timeout ends the wait). The four processes run at once
(one module fixture) to keep the suite fast; each must end within a generous guard.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import pytest

from tests.helpers import ROOT, closed_port, hang_guard

GUARD_S = 90  # a hang guard's base (hang_guard scales it): the checks end within about a dozen seconds
SECRET = "team-alpha-7f3c"  # a query value in the tracking URI: must never be printed


def _silent_listener() -> socket.socket:
    """A socket that listens (the kernel completes TCP handshakes) but never accepts or answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    return s


def _env(**extra) -> dict:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "MLFLOW_", "KDFLOW_S3_")) and k != "KDFLOW_HOME"}
    return {**base, "PYTHONPATH": ROOT, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", **extra}


PREPROCESS = ("import sys; from kdflow.steps.preprocess import run_preprocess; "
              "run_preprocess('s3://kdflow-data/raw/', sys.argv[1], sys.argv[2])")
CLI = "from kdflow.cli import entrypoint; entrypoint()"


@pytest.fixture(scope="module")
def outcomes(tiny_config_yaml, tmp_path_factory):
    """Each case's (exit status, stdout + stderr, the URI the error must name), run concurrently."""
    silent_s3, silent_mlflow = _silent_listener(), _silent_listener()
    ports = contextlib.ExitStack()  # the closed ports stay bound (and refusing) until every case ended
    s3_closed = f"http://127.0.0.1:{ports.enter_context(closed_port())}"
    s3_silent = f"http://127.0.0.1:{silent_s3.getsockname()[1]}"
    ml_closed = f"http://127.0.0.1:{ports.enter_context(closed_port())}"
    ml_silent = f"http://127.0.0.1:{silent_mlflow.getsockname()[1]}/mlflow"
    out = tmp_path_factory.mktemp("unreachable")
    cases = {
        "s3_closed": ([sys.executable, "-c", PREPROCESS, tiny_config_yaml, str(out / "a")],
                      _env(AWS_ENDPOINT_URL=s3_closed), s3_closed),
        "s3_silent": ([sys.executable, "-c", PREPROCESS, tiny_config_yaml, str(out / "b")],
                      _env(AWS_ENDPOINT_URL=s3_silent), s3_silent),
        "mlflow_closed": ([sys.executable, "-c", CLI, "registry", "tiny-student", "--tracking-uri",
                           f"{ml_closed}/?workspace={SECRET}"], _env(), f"{ml_closed}/?workspace=***"),
        "mlflow_silent": ([sys.executable, "-c", CLI, "registry", "tiny-student", "--tracking-uri",
                           f"{ml_silent}?workspace={SECRET}"], _env(), f"{ml_silent}?workspace=***"),
    }
    procs = {name: subprocess.Popen(cmd, env=env, cwd=out, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True) for name, (cmd, env, _) in cases.items()}
    results = {}
    guard = hang_guard(GUARD_S)
    try:
        for name, proc in procs.items():
            try:
                text, _ = proc.communicate(timeout=guard)
            except subprocess.TimeoutExpired:
                proc.kill()
                text = proc.communicate()[0] + f"\n[HUNG: killed after the {guard:.0f} s guard]"
            results[name] = (proc.returncode, text, cases[name][2])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        silent_s3.close()
        silent_mlflow.close()
        ports.close()
    return results


def _failed_clearly(result, *fix_words: str) -> str:
    code, text, uri = result
    assert "[HUNG" not in text, text[-3000:]
    assert code != 0, text[-3000:]
    assert uri in text, text[-3000:]
    assert "fix:" in text and all(w in text for w in fix_words), text[-3000:]
    assert SECRET not in text, text[-3000:]
    return text


@pytest.mark.parametrize("case", ["s3_closed", "s3_silent"])
def test_s3_unreachable_fails_the_step_with_the_endpoint_and_the_fix(outcomes, case):
    text = _failed_clearly(outcomes[case], "AWS_ENDPOINT_URL")
    assert "cannot reach S3" in text and "s3://kdflow-data/raw" in text
    # Refused at once vs. a read timeout: the error says which.
    assert ("EndpointConnectionError" if case == "s3_closed" else "ReadTimeoutError") in text


@pytest.mark.parametrize("case", ["mlflow_closed", "mlflow_silent"])
def test_mlflow_unreachable_fails_the_command_with_the_redacted_uri_and_the_fix(outcomes, case):
    code, text, _ = outcomes[case]
    _failed_clearly(outcomes[case], "--tracking-uri", "MLFLOW_TRACKING_URI")
    assert code == 2 and "Traceback" not in text  # the CLI's clean error for a problem the user can fix
    assert "cannot reach the MLflow tracking store" in text
    assert ("ConnectionRefusedError" if case == "mlflow_closed" else "no answer within") in text


def test_tracking_store_that_cannot_be_written_is_a_clear_error(tmp_path):
    """A sqlite or file store where no folder can be made (here: below a regular file): the error
    names the store, before MLflow creates anything."""
    from kdflow.util.errors import KdflowError
    from kdflow.registry.tracking import use_tracking

    (tmp_path / "blocker").write_text("a file, not a folder")
    for uri in (f"sqlite:///{tmp_path}/blocker/runs/mlflow.db", f"file://{tmp_path}/blocker/mlruns"):
        with pytest.raises(KdflowError, match="cannot be written") as exc:
            use_tracking(uri)
        assert uri in str(exc.value) and "tracking URI" in exc.value.fix
    assert [p.name for p in tmp_path.iterdir()] == ["blocker"]
