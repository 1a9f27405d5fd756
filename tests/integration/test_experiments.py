"""An experiment file runs alone: `--configfile config/experiments/<name>.yaml` plans only its runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import FULL_SIZE_PRESETS, copy_workflow
from test_workflow import planned_jobs, snakemake

EXPERIMENTS = sorted(
    path
    for path in (Path(__file__).resolve().parents[2] / "config" / "experiments").glob("*.yaml")
    if path.stem
    not in FULL_SIZE_PRESETS  # tests/unit/test_presets.py, tests/integration/test_presets_dryrun.py
)


def planned_runs(result) -> set[str]:
    return {
        part.split("=", 1)[1]
        for _, wildcards in planned_jobs(result)
        for part in wildcards.split(", ")
        if part.startswith("run=")
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("experiments"))


def test_there_is_an_example_experiment() -> None:
    assert EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_plans_only_its_own_runs(workdir: Path, experiment: Path) -> None:
    runs = set(yaml.safe_load(experiment.read_text())["runs"])
    default_runs = set(yaml.safe_load((workdir / "config" / "config.yaml").read_text())["runs"])
    assert runs and not runs & default_runs  # else the check below proves nothing
    # --configfile takes several files: it goes last, after the target
    result = snakemake(workdir, "-n", "all", "--configfile", f"config/experiments/{experiment.name}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert planned_runs(result) == runs
    assert not any(f"results/runs/{run}/" in result.stdout for run in default_runs)


def test_without_configfile_the_embedded_default_is_planned(workdir: Path) -> None:
    result = snakemake(workdir, "-n", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    default_runs = set(yaml.safe_load((workdir / "config" / "config.yaml").read_text())["runs"])
    assert planned_runs(result) == default_runs
