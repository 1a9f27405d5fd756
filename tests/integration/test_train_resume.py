"""Training segments: a killed or signalled segment resumes from state/ and ends exactly where an
uninterrupted one does; FSDP on 2 gloo ranks reproduces the single-process losses."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import torch
from helpers import write_train_toml
from trainer_processes import (
    init_checkpoint,
    kill_tree,
    launch,
    losses,
    setup_run,
    train,
    wait_for_checkpoint,
    weights,
)

pytestmark = pytest.mark.slow


def test_killed_segment_resumes_from_rolling_checkpoint(tmp_path, tiny_data, reference):
    config, step0 = setup_run(tmp_path, tiny_data, "killed", training={"steps": 24})
    final = tmp_path / "killed" / "checkpoints" / "step-24"
    proc = launch(config, step0, final, 24)
    wait_for_checkpoint(tmp_path / "killed" / "state" / "checkpoints" / "step-8", proc)
    kill_tree(proc)  # no chance to save: only the rolling checkpoint survives
    assert not final.exists()

    out = train(config, step0, final, 24)
    assert "resuming from rolling checkpoint" in out
    resumed_at = int(out.split("resuming from rolling checkpoint")[1].split("(step ")[1].split(")")[0])
    assert 8 <= resumed_at < 24
    assert losses(final)[24] == losses(reference)[24]  # bitwise: same layout, deterministic CPU
    assert set(losses(final)) == set(range(1, 25))  # metrics of the killed attempt merged, no gaps
    ref_w, got_w = weights(reference), weights(final)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_sigterm_checkpoints_and_exits_for_retry(tmp_path, tiny_data, reference):
    config, step0 = setup_run(
        tmp_path, tiny_data, "signalled", training={"steps": 24}, checkpoint={"interval_steps": 100}
    )
    final = tmp_path / "signalled" / "checkpoints" / "step-24"
    proc = launch(config, step0, final, 24)
    metrics = tmp_path / "signalled" / "state" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards it to the worker, as Slurm's warning would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    rolling = sorted((tmp_path / "signalled" / "state" / "checkpoints").glob("step-*"))
    assert len(rolling) == 1, out  # interval 100: this one was written because of the signal
    out = train(config, step0, final, 24)
    assert f"resuming from rolling checkpoint {rolling[0]}" in out
    assert losses(final)[24] == losses(reference)[24]


def test_stale_rolling_checkpoint_of_an_edited_run_is_ignored(tmp_path, tiny_data):
    config, step0 = setup_run(tmp_path, tiny_data, "edited", training={"steps": 8})
    proc = launch(config, step0, tmp_path / "edited" / "unused", 8)
    wait_for_checkpoint(tmp_path / "edited" / "state" / "checkpoints" / "step-4", proc)
    kill_tree(proc)
    # The user edits the learning rate: the workflow renders a new config and a new step-0.
    write_train_toml(
        config, tmp_path / "edited", tiny_data["train_index"], training={"steps": 8}, optimizer={"lr": 0.001}
    )
    shutil.rmtree(step0)
    init_checkpoint(config, step0)
    out = train(config, step0, tmp_path / "edited" / "checkpoints" / "step-8", 8)
    assert "resuming from rolling checkpoint" not in out
    assert "loaded " + str(step0) in out


def test_fsdp_two_ranks_match_single_process(tmp_path, tiny_data, reference):
    config, step0 = setup_run(tmp_path, tiny_data, "fsdp", training={"steps": 24})
    final = tmp_path / "fsdp" / "checkpoints" / "step-12"
    out = train(config, step0, final, 12, nproc=2)
    assert "dp_shard 2" in out
    ref, got = losses(reference), losses(final)
    for step in range(1, 13):
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
    # A checkpoint saved by 2 FSDP ranks continues in 1 process exactly like the 1-process run.
    cont = tmp_path / "fsdp" / "checkpoints" / "step-24"
    train(config, final, cont, 24, nproc=1)
    got = losses(cont)
    for step in range(13, 25):
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step


@pytest.mark.parametrize("nproc", [1, 2], ids=["1-process", "fsdp-2-ranks"])
def test_async_rolling_checkpoints_resume_exactly(tmp_path, tiny_data, reference, nproc):
    """checkpoint.async_save: the state is copied when saved, written in the background, and completed at
    the next save; a run killed after one of them resumes from it to the reference's step-24 exactly."""
    config, step0 = setup_run(
        tmp_path, tiny_data, "async", training={"steps": 24}, checkpoint={"async_save": True}
    )
    final = tmp_path / "async" / "checkpoints" / "step-24"
    proc = launch(config, step0, final, 24, nproc=nproc)
    wait_for_checkpoint(tmp_path / "async" / "state" / "checkpoints" / "step-8", proc)
    kill_tree(proc)
    assert not final.exists()
    out = train(config, step0, final, 24, nproc=nproc)
    assert "staged in" in out and "written in the background" in out  # the async path ran
    resumed_at = int(out.split("resuming from rolling checkpoint")[1].split("(step ")[1].split(")")[0])
    assert 8 <= resumed_at < 24
    got, ref = losses(final), losses(reference)
    if nproc == 1:
        assert got[24] == ref[24]
        ref_w, got_w = weights(reference), weights(final)
        assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    else:
        assert got[24] == pytest.approx(ref[24], rel=1e-4)
    assert not list((tmp_path / "async" / "state" / "checkpoints").glob(".*"))  # no partial folder left
