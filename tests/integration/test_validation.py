"""In-loop validation (validation.every_steps): the held-out loss inside the training job, equal to the
evaluation of the saved checkpoint, equal on 2 FSDP ranks, and without any effect on training itself."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_processes import losses, setup_run, train, weights

from lmrepro.checkpoint.dcp import load_model
from lmrepro.data.shards import TokenStream
from lmrepro.train.validation import window_starts

pytestmark = pytest.mark.slow


def metrics_rows(checkpoint) -> list[dict]:
    return [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]


def test_validation_logs_val_loss_without_changing_training(tmp_path, tiny_data, reference):
    validation = {
        "every_steps": 5,
        "index": str(tiny_data["heldout_index"]),
        "max_tokens": 640,
        "name": "heldout",
    }
    config, step0 = setup_run(tmp_path, tiny_data, "val", training={"steps": 24}, validation=validation)
    final = tmp_path / "val" / "checkpoints" / "step-24"
    train(config, step0, final, 24)
    rows = {r["step"]: r for r in metrics_rows(final)}
    assert sorted(s for s, r in rows.items() if "val_loss" in r) == [5, 10, 15, 20, 24]
    assert all(rows[s]["val_tokens"] == 640 for s in (5, 24))  # 20 windows of 32 targets
    assert losses(final) == losses(reference)  # bitwise: validation does not touch training
    ref_w, got_w = weights(reference), weights(final)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert rows[24]["val_loss"] < rows[5]["val_loss"]

    # the same number as scoring those windows of the saved checkpoint directly
    model, _ = load_model(final)
    stream = TokenStream(tiny_data["heldout_index"].parent)
    starts = window_starts(len(stream), 32, 640, 1)
    windows = torch.stack([torch.from_numpy(stream.window(s, 33).astype("int64")) for s in starts])
    with torch.no_grad():
        direct = float(model(windows[:, :-1], windows[:, 1:]))
    assert rows[24]["val_loss"] == pytest.approx(direct, rel=1e-5)

    # two FSDP ranks score half the windows each: the same loss
    config2, step0_2 = setup_run(tmp_path, tiny_data, "val2", training={"steps": 24}, validation=validation)
    final2 = tmp_path / "val2" / "checkpoints" / "step-10"
    train(config2, step0_2, final2, 10, nproc=2)
    rows2 = {r["step"]: r for r in metrics_rows(final2)}
    assert rows2[10]["val_tokens"] == 640
    assert rows2[10]["val_loss"] == pytest.approx(rows[10]["val_loss"], rel=1e-4)


def test_window_starts_spread_evenly_over_the_split():
    starts = window_starts(num_tokens=1001, seq_len=10, max_tokens=40, dp_size=2)
    assert starts == [0, 330, 660, 990]  # 4 windows of 11 tokens, first to last
    assert window_starts(1001, 10, 41, 3) == [0, 495, 990]  # a multiple of the dp size
    assert len(window_starts(101, 10, 10_000, 1)) == 10  # at most what the split holds
    with pytest.raises(ValueError, match="too few for 4 window"):
        window_starts(30, 10, 100, 4)
