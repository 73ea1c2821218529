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
                assert node.module.split(".")[0] != "kfp", path
                assert not node.module.startswith(("kdflow.components", "kdflow.pipelines")) or \
                    path.name in ("cli.py", "cli_cluster.py"), path


def test_components_call_exactly_one_library_function():
    for path in (ROOT / "components").glob("*.py"):
        if path.name in ("__init__.py", "images.py"):
            continue
        tree = ast.parse(path.read_text())
        steps = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.startswith("kdflow.steps.")]
        assert len(steps) == 1 and len(steps[0].names) == 1, path
        assert len(path.read_text().splitlines()) <= 40, f"{path} is no longer a thin adapter"


def test_the_package_list_installs_every_package_under_kdflow():
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"kdflow" + ("." + ".".join(p.parent.relative_to(ROOT / "kdflow").parts) if p.parent != ROOT / "kdflow"
               else "") for p in (ROOT / "kdflow").rglob("__init__.py")}
    assert on_disk | {"kdflow.components", "kdflow.pipelines"} == set(setup["packages"])
    assert setup["package-dir"]["kdflow.components"] == "components"
    assert setup["package-dir"]["kdflow.pipelines"] == "pipelines"


def test_components_and_pipelines_import_under_kdflow_only():
    code = ("import importlib.util as u, kdflow.components.images, kdflow.pipelines.local\n"
            "assert u.find_spec('components') is None and u.find_spec('pipelines') is None\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")
