"""On 2+ CUDA GPUs (the device tool's nvidia-h200-x2; `pytest -m gpu`): FSDP and tensor parallel over NCCL
reproduce the single-GPU losses of the same seed (fp32), and a TP checkpoint continues under FSDP.

Covers what CPU/gloo cannot: NCCL collectives, the fused AdamW kernel receiving clipping as grad_scale
with DTensor parameters, and the stop flag agreed over the separate gloo group beside NCCL."""

from __future__ import annotations

import pytest
import torch
from helpers import write_train_toml
from trainer_processes import losses, setup_run, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (device tool: h200-x2)"),
]


def assert_losses_match(got: dict, ref: dict, steps: range, rel: float = 1e-4) -> None:
    for step in steps:
        assert got[step] == pytest.approx(ref[step], rel=rel), (step, got[step], ref[step])


def test_fsdp_and_tp_on_two_gpus_match_one_gpu(tmp_path, tiny_data):
    config, step0 = setup_run(tmp_path, tiny_data, "ref", training={"steps": 24})
    reference = tmp_path / "ref" / "checkpoints" / "step-24"
    assert "on cuda" in train(config, step0, reference, 24)
    ref = losses(reference)

    config, step0 = setup_run(tmp_path, tiny_data, "fsdp", training={"steps": 24})
    fsdp = tmp_path / "fsdp" / "checkpoints" / "step-12"
    assert "dp_shard 2" in train(config, step0, fsdp, 12, nproc=2)
    assert_losses_match(losses(fsdp), ref, range(1, 13))

    config, step0 = setup_run(tmp_path, tiny_data, "tp", training={"steps": 24}, parallel={"tp_degree": 2})
    tp = tmp_path / "tp" / "checkpoints" / "step-12"
    assert "tp 2" in train(config, step0, tp, 12, nproc=2)
    assert_losses_match(losses(tp), ref, range(1, 13))

    # Saved by TP=2, continued by FSDP over 2 GPUs: DCP reshards, the losses continue the reference's.
    write_train_toml(config, tmp_path / "tp", tiny_data["train_index"], training={"steps": 24})
    continued = tmp_path / "tp" / "checkpoints" / "step-24"
    train(config, tp, continued, 24, nproc=2)
    assert_losses_match(losses(continued), ref, range(13, 25))
