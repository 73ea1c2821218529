"""`kdflow run`, as `make run` calls it: summary, cache hit on the second run, exit codes."""

import re

import pytest

from tests.helpers import run_kdflow

pytestmark = pytest.mark.e2e


def kdflow(*args, cwd, env=None):
    return run_kdflow(*args, cwd=cwd, env=env)


def _summary(stdout: str) -> dict:
    return {m.group(1): m.group(2) for m in re.finditer(r"^  (\S.*?)\s{2,}(.*)$", stdout, re.M)}


def test_run_twice_hits_the_cache(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(tiny_config_yaml)
    args = ("run", "--data", str(tiny_data), "--teacher", tiny_teacher, "--config", str(cfg),
            "--workdir", str(tmp_path / "work"))
    first = kdflow(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    s1 = _summary(first.stdout)
    assert s1["soft-label cache"].endswith("(miss: teacher ran)")
    assert s1["registered"] == "tiny-student version 1 @challenger"
    assert re.fullmatch(r"[0-9a-f]{64}", s1["dataset fingerprint"])
    assert (tmp_path / "work" / "mlflow.db").is_file() and (tmp_path / "work" / "cache" / "softlabels").is_dir()

    second = kdflow(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    s2 = _summary(second.stdout)
    assert s2["soft-label cache"] == s1["soft-label cache"].replace("miss: teacher ran", "hit: teacher not run")
    assert s2["registered"] == "tiny-student version 2 @challenger"
    assert "soft-label cache hit" in second.stdout + second.stderr


def test_gate_failure_exits_3_and_bad_input_exits_2(tmp_path, tiny_data, tiny_teacher, tiny_config_yaml):
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(tiny_config_yaml.replace("gate: {min_accuracy: 0.0, max_drop: 1.0}",
                                            "gate: {min_accuracy: 1.0, max_drop: 0.0}")
                   .replace("train: {epochs: 8, batch_size: 16, lr: 0.05", "train: {epochs: 1, batch_size: 16, lr: 0.000001"))
    failed = kdflow("run", "--data", str(tiny_data), "--teacher", tiny_teacher, "--config", str(cfg),
                    "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert failed.returncode == 3, failed.stderr[-3000:]
    assert _summary(failed.stdout)["registered"].startswith("not registered (failed: FAIL min_accuracy")

    missing = kdflow("run", "--data", str(tmp_path / "nope"), "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "error: data folder" in missing.stderr and "fix:" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_embedded_default_on_digits(tmp_path):
    """No arguments: digits written as an image folder, a teacher trained, the student gated at 3 points."""
    done = kdflow("run", cwd=tmp_path, env={"KDFLOW_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-3000:]
    s = _summary(done.stdout)
    teacher, student = (float(s[k].split("%")[0]) for k in ("teacher top-1 (test)", "student top-1 (test)"))
    assert teacher - student <= 3.0 and student > 90.0
    assert s["registered"] == "kdflow-digits-student version 1 @challenger"
    assert len(list((tmp_path / "home" / "data" / "digits").rglob("*.png"))) == 1797
    assert "teacher: bootstrapped convnet_m (trained now)" in done.stderr
