"""Config values never reach a shell unquoted, and nothing unpickles arbitrary objects.

- Every path a rule's shell command names ({input.*}, {output.*}, {log}) is shell-quoted (`:q`); a
  working directory with spaces runs end to end (tests/integration/test_workflow.py).
- Names that become parts of result paths (datasets, tokenizers, evals, bases, runs, wildcards) are
  pattern-checked to characters a shell never interprets.
- Every torch.load passes weights_only=True.
"""

from __future__ import annotations

import ast
import re

import pytest
import yaml
from helpers import REPO

RULES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
SHELL_STRING = re.compile(r"^\s+shell:\n((?:\s+\".*\"\n)+)", re.M)
PATH_FIELD = re.compile(r"\{(input|output)(\.\w+)?(?::(\w+))?\}|\{log(?::(\w+))?\}")
HOSTILE_NAMES = [
    "a b",
    "a;b",
    "$(rm -rf x)",
    "a'b",
    'a"b',
    "`x`",
    "a|b",
    "a&b",
    "a>b",
    "a\nb",
    "a*",
    "~a",
    "a/b",
]


def shell_commands() -> list[tuple[str, str]]:
    found = []
    for path in RULES:
        for block in SHELL_STRING.findall(path.read_text()):
            found.append((path.name, block))
    return found


def test_every_path_in_a_shell_command_is_quoted() -> None:
    commands = shell_commands()
    assert len(commands) >= 15, "the rules' shell: blocks were not found"
    unquoted = []
    for name, block in commands:
        for match in PATH_FIELD.finditer(block):
            spec = match.group(3) if match.group(1) else match.group(4)
            if spec != "q":
                unquoted.append((name, match.group(0)))
    assert not unquoted, f"paths reach the shell unquoted (use {{input.x:q}}): {unquoted}"


def name_patterns() -> dict[str, str]:
    """Every name pattern: the schema's propertyNames and the wildcard constraints of common.smk."""
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    patterns = {
        f"schema {key}": section["propertyNames"]["pattern"]
        for key, section in schema["properties"].items()
        if "propertyNames" in section
    }
    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    block = common.split("wildcard_constraints:", 1)[1].split("\n\n", 1)[0]
    for name, pattern in re.findall(r"(\w+)=r\"([^\"]+)\"", block):
        patterns[f"wildcard {name}"] = f"^{pattern}$"
    return patterns


@pytest.mark.parametrize("hostile", HOSTILE_NAMES)
def test_names_that_become_paths_cannot_carry_shell_syntax(hostile: str) -> None:
    patterns = name_patterns()
    assert {"schema datasets", "schema tokenizers", "schema runs", "schema bases", "wildcard run"} <= set(
        patterns
    ), patterns
    for where, pattern in patterns.items():
        assert not re.search(pattern, hostile), (where, pattern, hostile)


def test_every_torch_load_is_weights_only() -> None:
    loose = []
    for folder in ("src", "workflow/scripts", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                    weights_only = {k.arg: k.value for k in node.keywords}.get("weights_only")
                    if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                        loose.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not loose, f"torch.load without weights_only=True: {loose}"
