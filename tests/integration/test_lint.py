"""The code style gates of `make lint`, enforced in CI: ruff, ruff format, snakefmt, snakemake --lint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

BIN = Path(sys.executable).parent


def _run(*cmd: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "cmd",
    [
        ("ruff", "check", "src", "tests", "workflow", "benchmarks"),
        ("ruff", "format", "--check", "src", "tests", "workflow", "benchmarks"),
        ("snakefmt", "--check", "Snakefile", "workflow/rules"),
    ],
    ids=["ruff", "ruff-format", "snakefmt"],
)
def test_style_tools_are_clean(cmd):
    result = _run(*(str(BIN / cmd[0]),) + cmd[1:])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_snakemake_lint_reports_nothing():
    result = _run(sys.executable, "-m", "snakemake", "--lint")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output
