"""Masked-LM training through the real trainer (torchrun, gloo on CPU, fp32): the loss is the mean over the
masked tokens of the whole global batch, so 4 micro-batches give the losses and gradient norms of 1, and
2 FSDP ranks or 2 TP ranks those of 1 process; a resumed segment continues bitwise (same masks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from trainer_processes import losses, setup_run, train, weights

pytestmark = pytest.mark.slow

STEPS = 8
# The tiny BPE (tests/conftest.py): <|begin_of_text|> 0, <|end_of_text|> 1, <|pad|> 2 (the mask token here).
MLM = {
    "model": {
        "overrides": {
            "dim": 64,
            "n_layers": 2,
            "n_heads": 4,
            "n_kv_heads": 2,
            "ffn_dim": 128,
            "causal": False,
        }
    },
    "training": {
        "steps": STEPS,
        "objective": "mlm",
        "mlm": {"mask_ratio": 0.3, "mask_token_id": 2, "never_mask_ids": [0, 1, 2]},
    },
}


def mlm_sections(**training) -> dict:
    return {**MLM, "training": {**MLM["training"], **training}}


def rows(checkpoint: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (checkpoint / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def mlm_reference(tmp_path_factory, tiny_data) -> Path:
    tmp = tmp_path_factory.mktemp("mlm")
    config, step0 = setup_run(tmp, tiny_data, "ref", **mlm_sections())
    final = tmp / "ref" / "checkpoints" / f"step-{STEPS}"
    train(config, step0, final, STEPS)
    return final


def assert_same_trajectory(got: Path, ref: Path, steps: range, rel: float) -> None:
    """Loss and gradient norm of every step: a mean of micro-batch means, or an FSDP average left
    unscaled, would show in both (Adam's update barely depends on the gradient's scale)."""
    got_rows, ref_rows = rows(got), rows(ref)
    for step in steps:
        for key in ("loss", "grad_norm"):
            assert got_rows[step][key] == pytest.approx(ref_rows[step][key], rel=rel), (step, key)


def test_mlm_loss_starts_near_log_vocab_and_falls(mlm_reference: Path) -> None:
    loss = losses(mlm_reference)
    assert loss[1] == pytest.approx(torch.log(torch.tensor(300.0)).item(), rel=0.1)  # uniform over 300
    assert loss[STEPS] < loss[1] - 0.5


def test_four_micro_batches_equal_one(tmp_path, tiny_data, mlm_reference) -> None:
    config, step0 = setup_run(tmp_path, tiny_data, "gas4", **mlm_sections(micro_batch_sequences=2))
    final = tmp_path / "gas4" / "checkpoints" / f"step-{STEPS}"
    out = train(config, step0, final, STEPS)
    assert "gradient accumulation 4" in out
    assert_same_trajectory(final, mlm_reference, range(1, STEPS + 1), rel=1e-5)


def test_two_fsdp_ranks_equal_one_process(tmp_path, tiny_data, mlm_reference) -> None:
    config, step0 = setup_run(tmp_path, tiny_data, "fsdp", **mlm_sections())
    final = tmp_path / "fsdp" / "checkpoints" / f"step-{STEPS}"
    assert "dp_shard 2" in train(config, step0, final, STEPS, nproc=2)
    assert_same_trajectory(final, mlm_reference, range(1, STEPS + 1), rel=1e-5)


def test_two_tensor_parallel_ranks_equal_one_process(tmp_path, tiny_data, mlm_reference) -> None:
    """Loss parallel (vocabulary-sharded logits, F.cross_entropy sum over the masked positions)."""
    config, step0 = setup_run(tmp_path, tiny_data, "tp", **mlm_sections(), parallel={"tp_degree": 2})
    final = tmp_path / "tp" / "checkpoints" / f"step-{STEPS}"
    assert "tp 2" in train(config, step0, final, STEPS, nproc=2)
    assert_same_trajectory(final, mlm_reference, range(1, STEPS + 1), rel=1e-4)


def test_resumed_segment_continues_bitwise(tmp_path, tiny_data, mlm_reference) -> None:
    config, step0 = setup_run(tmp_path, tiny_data, "resume", **mlm_sections())
    middle = tmp_path / "resume" / "checkpoints" / "step-4"
    train(config, step0, middle, 4)
    final = tmp_path / "resume" / "checkpoints" / f"step-{STEPS}"
    train(config, middle, final, STEPS)
    ref = losses(mlm_reference)
    assert {s: losses(final)[s] for s in range(5, STEPS + 1)} == {s: ref[s] for s in range(5, STEPS + 1)}
    ref_w, got_w = weights(mlm_reference), weights(final)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
