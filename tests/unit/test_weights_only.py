"""Every torch.load in src/ and workflow/ passes weights_only=True: a checkpoint file can never run code."""

from __future__ import annotations

import ast
import re

from helpers import REPO


def _unsafe_loads(source: str) -> list[int]:
    """Line numbers of torch.load(...) calls without a literal weights_only=True."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "load"):
            continue
        if not (isinstance(func.value, ast.Name) and func.value.id == "torch"):
            continue
        safe = any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
        if not safe:
            bad.append(node.lineno)
    return bad


def test_every_torch_load_uses_weights_only() -> None:
    files = [*REPO.glob("src/**/*.py"), *REPO.glob("workflow/**/*.py")]
    assert len(files) > 20
    found = {str(f.relative_to(REPO)): _unsafe_loads(f.read_text()) for f in files}
    assert {f: lines for f, lines in found.items() if lines} == {}
    rules = [*REPO.glob("workflow/**/*.smk"), REPO / "Snakefile"]
    in_rules = [str(f) for f in rules if f.is_file() and re.search(r"torch\.load\(", f.read_text())]
    assert in_rules == []  # rules call scripts; a load there would escape the check above


def test_the_check_sees_an_unsafe_load() -> None:
    source = (
        "import torch\nx = torch.load(p)\ny = torch.load(p, weights_only=True)\n"
        "z = torch.load(\n  p, weights_only=False)\n"
    )
    assert _unsafe_loads(source) == [2, 4]
