"""The trainer in process (1 rank, CPU): a damaged rolling checkpoint is skipped for the previous good one;
a damaged start checkpoint stops the segment naming the file; a NaN at a step that is not logged is caught
before the next checkpoint, and no checkpoint of non-finite weights is written."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from helpers import write_train_toml

from lmrepro.checkpoint import checksums
from lmrepro.config import load_job_config
from lmrepro.train.trainer import Trainer, init_checkpoint, run_segment

pytestmark = pytest.mark.usefixtures("restore_signal_handlers")  # the trainer runs in process


def _run(tmp_path: Path, tiny_data, name: str, steps: int, **sections):
    run_dir = tmp_path / name
    run_dir.mkdir()
    sections = {"training": {"steps": steps}, **sections}
    config = write_train_toml(run_dir / "train.toml", run_dir, tiny_data["train_index"], **sections)
    job = load_job_config(config)
    step0 = run_dir / "checkpoints" / "step-0"
    init_checkpoint(job, step0)
    return job, step0


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from lmrepro.checkpoint.dcp import load_model

    return load_model(checkpoint)[0].state_dict()


@pytest.mark.slow
def test_damaged_rolling_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_data, caplog) -> None:
    job, step0 = _run(tmp_path, tiny_data, "fallback", 8, checkpoint={"interval_steps": 2})  # keep 2
    first = step0.parent / "step-8"
    assert run_segment(job, step0, first, 8) == 0
    rolling = Path(job.run_dir) / "state" / "checkpoints"
    assert sorted(p.name for p in rolling.iterdir()) == ["step-4", "step-6"]
    distcp = next((rolling / "step-6").glob("*.distcp"))
    distcp.write_bytes(distcp.read_bytes()[: distcp.stat().st_size // 2])  # as a full disk leaves it

    caplog.set_level(logging.INFO)
    again = step0.parent / "again-8"
    assert run_segment(job, step0, again, 8) == 0  # the retry of a killed job
    assert f"rolling checkpoint {rolling / 'step-6'} is damaged: {distcp}" in caplog.text
    assert f"resuming from rolling checkpoint {rolling / 'step-4'}" in caplog.text
    checksums.verify(rolling / "step-6")  # deleted, then written again by the retry
    ref, got = _weights(first), _weights(again)
    assert all(torch.equal(ref[k], got[k]) for k in ref)  # resumed from step 4: the same result


def test_damaged_start_checkpoint_is_an_error_naming_the_file(tmp_path, tiny_data) -> None:
    job, step0 = _run(tmp_path, tiny_data, "damaged", 4)
    (step0 / ".metadata").unlink()
    with pytest.raises(checksums.CorruptCheckpoint, match=rf"{step0 / '.metadata'} is missing"):
        run_segment(job, step0, step0.parent / "step-4", 4)


def test_nan_at_an_unlogged_step_stops_before_any_checkpoint_of_it(tmp_path, tiny_data) -> None:
    """Logged every 5 steps, checkpointed every 4: the NaN of step 3 is caught before step 4's save."""
    job, step0 = _run(
        tmp_path, tiny_data, "nan", 8, metrics={"log_every_steps": 5}, checkpoint={"interval_steps": 4}
    )
    final = step0.parent / "step-8"
    trainer = Trainer(job, step0, final, 8)

    def poison_at_step_3(module, inputs, output):
        return output * float("nan") if trainer.step == 3 and module.training else output

    trainer.model.norm.register_forward_hook(poison_at_step_3)
    with pytest.raises(FloatingPointError, match="not finite at step 3 \\(seen at step 4\\)"):
        trainer.train()
    assert trainer.step == 4
    assert not any(p.name.startswith("step-") for p in (trainer.state_dir / "checkpoints").glob("*"))
    assert not final.exists()
    metrics = trainer.state_dir / "metrics.jsonl"
    assert not metrics.exists() or "NaN" not in metrics.read_text()


def test_non_finite_weights_are_never_saved(tmp_path, tiny_data) -> None:
    job, step0 = _run(tmp_path, tiny_data, "infweights", 4, metrics={"log_every_steps": 5})
    final = step0.parent / "step-4"
    trainer = Trainer(job, step0, final, 4)
    trainer.optimizer.register_step_post_hook(  # finite loss and gradients; a weight blown up by the update
        lambda opt, args, kwargs: trainer.step == 4 and trainer.model.norm.weight.data.fill_(float("inf"))
    )
    with pytest.raises(FloatingPointError, match="model weights are not finite after step 4"):
        trainer.train()
    assert not final.exists()
