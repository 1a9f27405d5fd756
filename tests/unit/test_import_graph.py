"""The package's layers, checked from the code's own imports (function-level imports included): no cycle;
model/ and data/ import nothing from the layers that use them; config.py imports nothing from data/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "src" / "lmrepro"

# model/ and data/ are the bottom layers: trainers, evaluators, checkpointers, the report and the
# workflow-facing modules build on them, never the other way round.
UPPER_LAYERS = (
    "lmrepro.train",
    "lmrepro.eval",
    "lmrepro.checkpoint",
    "lmrepro.report",
    "lmrepro.workflow",
    "lmrepro.launch",
    "lmrepro.slurm",
    "lmrepro.run_config",
    "lmrepro.run_layout",
    "lmrepro.plan",
)


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(target: str, modules: set[str]) -> str | None:
    """The lmrepro module an import names (a name imported from a package may be a submodule)."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if target.split(".")[0] != "lmrepro":
                    continue
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop edges into a package's own __init__ from inside the package (re-export, not a layer cycle)."""
    return {
        name: {t for t in targets if not (name.startswith(t + ".") and t != "lmrepro")} - {"lmrepro"}
        for name, targets in graph.items()
    }


def test_the_checker_finds_cycles_and_upward_imports(tmp_path):
    pkg = tmp_path / "lmrepro"
    (pkg / "data").mkdir(parents=True)
    (pkg / "train").mkdir()
    for init in [pkg / "__init__.py", pkg / "data" / "__init__.py", pkg / "train" / "__init__.py"]:
        init.write_text("")
    (pkg / "data" / "a.py").write_text("def f():\n    from lmrepro.data.b import g\n")
    (pkg / "data" / "b.py").write_text("from . import a\nfrom lmrepro.train.t import step\n")
    (pkg / "train" / "t.py").write_text("step = 1\n")
    graph = _package_edges(import_graph(pkg))
    assert find_cycle(graph) == ["lmrepro.data.a", "lmrepro.data.b", "lmrepro.data.a"]
    assert "lmrepro.train.t" in graph["lmrepro.data.b"]


def test_no_import_cycle():
    cycle = find_cycle(_package_edges(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer", ["lmrepro.model", "lmrepro.data"])
def test_bottom_layers_import_nothing_from_above(layer):
    graph = import_graph()
    upward = {
        f"{name} -> {target}"
        for name, targets in graph.items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if any(target == up or target.startswith(up + ".") for up in UPPER_LAYERS)
    }
    assert not upward, sorted(upward)


def test_config_imports_nothing_from_data():
    assert not {t for t in import_graph()["lmrepro.config"] if t.startswith("lmrepro.data")}
