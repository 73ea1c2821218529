"""The three layers stay apart (the core library never imports kfp, components stay thin) and the
package keeps its shape: sub-packages by concept, no import cycle, no oversized module."""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "kdflow"


def _modules() -> dict[str, Path]:
    """Every module under kdflow/ by dotted name (a package by its __init__.py)."""
    out = {}
    for path in CORE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(tree: ast.AST):
    """Every import statement that runs (at module level or inside a function), not those under
    ``if TYPE_CHECKING:``, which exist for annotations and never execute."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """Module -> the kdflow modules it imports. ``from a.b import c`` is an edge to ``a.b.c`` when
    that is a module, else to ``a.b``; a relative import is resolved against the importing package."""
    modules = _modules()

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base)
                           for a in node.names]
            graph[name].update(t for t in targets if t and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_of_kdflow_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 100 and sum(map(len, graph.values())) > 300  # the walk found the package's imports
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_a_late_import():
    """The check itself: a cycle closed by an import inside a function still counts; one closed
    only under TYPE_CHECKING does not."""
    late = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(late) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                     "def f():\n    import y\n")
    assert [n.names[0].name for n in _imports(tree) if isinstance(n, ast.Import)] == ["y"]


def test_the_top_of_the_package_holds_sub_packages_only():
    """Every module belongs to a concept's sub-package; the top level is the package itself."""
    loose = sorted(p.name for p in CORE.glob("*.py") if p.name != "__init__.py")
    assert loose == []
    for old in ("cli", "config", "storage", "tracking", "platform", "cron", "trainjob", "redact", "reach",
                "s3storage", "typed", "schema", "lineage", "gate", "export", "summary", "inputs", "logs",
                "memory", "cpus", "errors", "digest", "progress"):
        assert not (CORE / f"{old}.py").exists(), old


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in CORE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_no_kfp_import_statement_in_the_core():
    """Every import statement of every module, in functions too: the core never names kfp, and only
    the CLI (the entry layer) reaches the components and pipelines."""
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] in ("kfp", "kfp_server_api") for a in node.names), path
            elif isinstance(node, ast.ImportFrom) and node.module:
                assert node.module.split(".")[0] not in ("kfp", "kfp_server_api"), path
                assert not node.module.startswith(("kdflow.components", "kdflow.pipelines")) or \
                    path.parent.name == "cli", path


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
