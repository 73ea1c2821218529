"""The layers, seen from fresh interpreters: what importing the core and loading a config pull in, the
installed names of components and pipelines, and the CLI's exit on a bad config."""

import pkgutil
import subprocess
import sys

import kdflow
from tests.helpers import ROOT, hang_guard


def test_importing_every_kdflow_module_does_not_import_kfp():
    modules = [m.name for m in pkgutil.walk_packages(kdflow.__path__, "kdflow.")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'kfp' not in sys.modules, sorted(k for k in sys.modules if k.startswith('kfp'))\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=hang_guard(300))


def test_loading_a_config_imports_neither_torch_nor_kfp():
    """The configuration layer is torch-free: a config loads, checks and prints its schema without
    the 1-2 s torch import (the CLI's config command, the sweep planner and every step's start)."""
    code = ("import sys\nfrom kdflow.config import Config\nfrom kdflow.config.schema import config_schema\n"
            "Config.from_yaml('{}'); Config.from_yaml('distill: {method: hint, options: {pairs: "
            "[{teacher: layer2, student: stages.1}]}}'); config_schema()\n"
            "assert 'torch' not in sys.modules and 'kfp' not in sys.modules, "
            "sorted(k for k in sys.modules if k.split('.')[0] in ('torch', 'kfp'))\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=hang_guard(300))


def test_components_and_pipelines_import_under_kdflow_only():
    code = ("import importlib.util as u, kdflow.components.images, kdflow.pipelines.local\n"
            "assert u.find_spec('components') is None and u.find_spec('pipelines') is None\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/", timeout=hang_guard(300))


def test_cli_reports_config_errors_cleanly_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochz: 3}\n")
    proc = subprocess.run([sys.executable, "-c", "from kdflow.cli import entrypoint; entrypoint()",
                           "config", "--config", str(bad)], capture_output=True, text=True,
                          timeout=hang_guard(300))
    assert proc.returncode == 2
    assert "error: unknown config key 'train.epochz'" in proc.stderr
    assert "fix: did you mean 'epochs'" in proc.stderr
    assert "Traceback" not in proc.stderr
