"""The three layers stay apart: the core library never imports kfp, components stay thin."""

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import kdflow

ROOT = Path(__file__).resolve().parents[2]


def test_importing_every_kdflow_module_does_not_import_kfp():
    modules = [m.name for m in pkgutil.walk_packages(kdflow.__path__, "kdflow.")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "assert 'kfp' not in sys.modules, sorted(k for k in sys.modules if k.startswith('kfp'))\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_kfp_import_statement_in_the_core():
    for path in (ROOT / "kdflow").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "kfp" for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("kfp", "components", "pipelines") or \
                    path.name == "cli.py", path


def test_components_call_exactly_one_library_function():
    for path in (ROOT / "components").glob("*.py"):
        if path.name in ("__init__.py", "images.py"):
            continue
        tree = ast.parse(path.read_text())
        steps = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.startswith("kdflow.steps.")]
        assert len(steps) == 1 and len(steps[0].names) == 1, path
        assert len(path.read_text().splitlines()) <= 40, f"{path} is no longer a thin adapter"
