"""Retention: a segment checkpoint made model-only keeps its model and train state byte for byte, its other
files and its modification time (Snakemake sees the same output), loads for eval and export, and refuses to
resume a segment with a fresh optimizer."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import write_train_toml
from torch.distributed.checkpoint import FileSystemReader

from lmrepro.checkpoint import dcp
from lmrepro.checkpoint.retention import drop_optimizer_state, folder_bytes
from lmrepro.config import load_job_config
from lmrepro.train.trainer import init_checkpoint
from lmrepro.workflow import optimizer_dropped_steps, optimizer_needed_until


def test_which_checkpoints_drop_their_optimizer() -> None:
    spec = {"steps": 200, "segment_steps": 50, "keep_optimizer_last_k": 1}
    assert optimizer_dropped_steps(spec) == [50, 100, 150]  # only step-200 keeps it
    assert optimizer_dropped_steps({**spec, "keep_optimizer_last_k": 2}) == [50, 100]
    assert optimizer_dropped_steps({**spec, "keep_optimizer_last_k": 9}) == []
    assert optimizer_needed_until(spec, 100) == 150  # dropped once segment 150 is complete
    assert optimizer_needed_until({**spec, "keep_optimizer_last_k": 2}, 50) == 150


@pytest.fixture
def segment_checkpoint(tmp_path, tiny_data):
    """A checkpoint with AdamW state after one step, like a segment's (metrics.jsonl, Snakemake's stamp)."""
    job = load_job_config(write_train_toml(tmp_path / "train.toml", tmp_path, tiny_data["train_index"]))
    step0 = tmp_path / "checkpoints" / "step-0"
    init_checkpoint(job, step0)
    model, info = dcp.load_model(step0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    model(ids[:, :-1], ids[:, 1:]).backward()
    optimizer.step()
    train_state = {"step": 1, "tokens_seen": 32, "rng": torch.get_rng_state()}
    path = tmp_path / "checkpoints" / "step-1"
    saved = dcp.save(
        path, model, optimizer, train_state, {**info, "step": 1}, {"metrics.jsonl": '{"step": 1}\n'}
    )
    (path / ".snakemake_timestamp").touch()
    for f in [*path.iterdir(), path]:
        os.utime(f, (1_700_000_000, 1_700_000_000))
    return path, model, optimizer, train_state, saved


def test_drop_optimizer_state_keeps_model_train_state_and_times(segment_checkpoint) -> None:
    path, model, optimizer, train_state, saved = segment_checkpoint
    before = folder_bytes(path)
    record = drop_optimizer_state(path)
    assert record["dropped"] and record["bytes_before"] == before and record["bytes_after"] < 0.5 * before
    info = dcp.read_checkpoint_info(path)
    assert info["contents"] == ["model", "train"] and info["checkpoint_id"] == saved["checkpoint_id"]
    assert info["optimizer_dropped"]["by"] == "keep_optimizer_last_k"
    keys = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    assert not any(k.startswith("optimizer.") for k in keys) and any(k.startswith("train.") for k in keys)
    # Snakemake's view: the same modification times, the other files kept
    assert path.stat().st_mtime == 1_700_000_000
    assert (path / ".snakemake_timestamp").stat().st_mtime == 1_700_000_000
    assert max(f.stat().st_mtime for f in path.iterdir()) == 1_700_000_000
    assert (path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not list(path.parent.glob(".step-1*"))  # no partial or old folder left

    reloaded, _ = dcp.load_model(path)  # what eval and export read
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())
    state = {"step": 0, "tokens_seen": 0, "rng": torch.get_rng_state()}
    dcp.load(path, reloaded, None, state)  # model + train state, no optimizer
    assert state["step"] == 1 and torch.equal(state["rng"], train_state["rng"])
    with pytest.raises(ValueError, match="optimizer state was dropped .*keep_optimizer_last_k"):
        dcp.load(path, reloaded, torch.optim.AdamW(reloaded.parameters()), state)

    again = drop_optimizer_state(path)  # idempotent: nothing left to drop
    assert not again["dropped"] and again["bytes_after"] == record["bytes_after"]
    assert json.loads((path / "meta.json").read_text())["optimizer_dropped"] == info["optimizer_dropped"]
