"""`make run` with no arguments: the embedded default, end to end, as a new user first meets kdflow.

Alone in its file: the suite's longest test (the digits, a teacher trained, eight cached views), so a
test process can start it early while the other one runs the rest (tests/conftest.py orders files)."""

import pytest

from tests.helpers import run_kdflow as kdflow
from tests.helpers import summary_fields as _summary

pytestmark = pytest.mark.e2e


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
