"""What a fresh interpreter loads. A kfp.local task (and a pod on a cluster) runs each step in a new
process, so every heavy import a step does not need is paid again on every run: the step modules
import torch, MLflow or matplotlib only inside the code that uses them."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, hang_guard

HEAVY = ("torch", "mlflow", "matplotlib")


def _loaded_after(code: str) -> set[str]:
    """The heavy packages (and kfp) loaded once ``code`` ran in a fresh interpreter."""
    probe = code + "\nimport sys\nprint(' '.join(m for m in %r if m in sys.modules))\n" % ((*HEAVY, "kfp"),)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=hang_guard(120),
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr[-3000:]
    return set(done.stdout.split())


# The modules the components import when their task starts (and registry.tracking, which the tracking
# and registration steps use): none loads torch, MLflow or matplotlib before it needs them. The steps
# that run a model (teacher inference, distillation, evaluation) need torch anyway.
@pytest.mark.parametrize("module", ["kdflow.steps.fingerprint", "kdflow.steps.preprocess", "kdflow.steps.champion",
                                    "kdflow.steps.adapt", "kdflow.steps.register", "kdflow.steps.sweep",
                                    "kdflow.steps.trainjob", "kdflow.registry.tracking"])
def test_a_step_module_loads_nothing_heavy_at_import(module):
    loaded = _loaded_after(f"import {module}")
    assert not loaded & set(HEAVY), f"{module} imported {sorted(loaded & set(HEAVY))} at import"


def test_steps_that_need_no_model_run_without_torch(tiny_data, tiny_config_yaml, tmp_path):
    """Preprocess decodes images and writes shards; teacher adaptation, off by default, hands the
    teacher on: neither loads torch or MLflow when it runs."""
    code = ("import sys\n"
            "from kdflow.steps.preprocess import run_preprocess\n"
            "from kdflow.steps.adapt import run_adaptation\n"
            f"run_preprocess({str(tiny_data)!r}, {tiny_config_yaml!r}, {str(tmp_path / 'ds')!r})\n"
            f"out = run_adaptation({str(tmp_path / 'ds')!r}, 'teacher.pt', {tiny_config_yaml!r}, 'unused')\n"
            "assert out == {'teacher_uri': 'teacher.pt', 'adapted': False, 'reused': False}, out\n")
    assert not _loaded_after(code) & set(HEAVY)
    assert (tmp_path / "ds" / "manifest.json").is_file()


def test_importing_evaluation_does_not_import_matplotlib():
    code = ("import kdflow.evaluation, kdflow.evaluation.accuracy, kdflow.evaluation.stats\n"
            "import kdflow.evaluation.calibration, kdflow.evaluation.privacy, kdflow.evaluation.plots\n")
    assert "matplotlib" not in _loaded_after(code), "matplotlib imported eagerly"


def test_cron_validation_does_not_import_kfp():
    assert "kfp" not in _loaded_after("import kdflow.cluster.cron; kdflow.cluster.cron.validate('0 0 3 * * *')")
