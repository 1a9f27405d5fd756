"""Bad input stops the workflow before any job runs, with a message naming the key or path, and
leaves results/ untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml


def _run_all(workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "all"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _edit(workdir: Path, change) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def _set_override(config, section, key, value):
    config["runs"]["tiny"].setdefault("overrides", {}).setdefault(section, {})[key] = value


CASES = {
    "typo in a run key": (
        lambda c: c["runs"]["tiny"].update(segmnet_steps=5),
        ["segmnet_steps"],
    ),
    "typo in a trainer override": (
        lambda c: _set_override(c, "optimizer", "lrr", 0.1),
        ["runs.tiny", "optimizer.lrr"],
    ),
    "negative learning rate": (
        lambda c: _set_override(c, "optimizer", "lr", -0.001),
        ["runs.tiny", "optimizer.lr", "> 0"],
    ),
    "wrongly typed value": (
        lambda c: c["runs"]["tiny"].update(steps="many"),
        ["many", "steps"],
    ),
    "missing corpus file": (
        lambda c: c["datasets"].update(mine={"source": "local", "files": {"train": "data/nowhere.jsonl"}}),
        ["datasets.mine.files.train", "data/nowhere.jsonl"],
    ),
    "a transformers model type that is not a causal LM": (
        lambda c: _set_override(c, "model", "hf", {"model_type": "t5"}),
        ["runs.tiny", "model.hf.model_type", "'t5' has no causal LM"],
    ),
    "a transformers config folder that does not exist": (
        lambda c: _set_override(c, "model", "hf", {"config": "models/nowhere"}),
        ["runs.tiny", "model.hf.config = models/nowhere: no config.json"],
    ),
    "K-FAC on GPT-2's Conv1D": (
        lambda c: (
            _set_override(c, "model", "hf", {"model_type": "gpt2", "config_values": {"n_layer": 1}}),
            _set_override(
                c, "optimizer", "kfac", {"enabled": True, "factor_update_steps": 1, "inv_update_steps": 1}
            ),
        ),
        ["runs.tiny", "optimizer.kfac.enabled = true", "Conv1D"],
    ),
    "unknown dataset of a run": (
        lambda c: c["runs"]["tiny"].update(dataset="fineweb"),
        ["runs.tiny.dataset", "fineweb"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_stops_before_any_job(workflow_copy, case):
    change, expected = CASES[case]
    precious = workflow_copy / "results" / "runs" / "tiny" / "checkpoints" / "step-150" / "meta.json"
    precious.parent.mkdir(parents=True)
    precious.write_text("{}")
    _edit(workflow_copy, change)
    result = _run_all(workflow_copy)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    for fragment in expected:
        assert fragment in message, message[-3000:]
    assert precious.read_text() == "{}"
    assert not (workflow_copy / "results" / "data").exists()  # no job ran
