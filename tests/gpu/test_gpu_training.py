"""On a CUDA GPU (run through the device tool: `pytest -m gpu`): bf16 training of the debug flavor
converges on the embedded synthetic data, compiled and eager, through the real trainer (NCCL/1 GPU)."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_processes import losses, setup_run, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with the device tool)"),
]


@pytest.mark.parametrize("compile_blocks", [False, True], ids=["eager", "compiled"])
def test_bf16_debug_flavor_converges(tmp_path, tiny_data, compile_blocks):
    sections = {
        "model": {"flavor": "debug", "vocab_size": 300, "overrides": {}},
        "data": {"seq_len": 128},
        "training": {
            "steps": 150,
            "global_batch_tokens": 8192,
            "dtype": "bfloat16",
            "compile": compile_blocks,
        },
        "schedule": {"warmup_steps": 15},
        "metrics": {"log_every_steps": 10, "tensorboard": False},
        "checkpoint": {"interval_steps": 50},
    }
    config, step0 = setup_run(tmp_path, tiny_data, "gpu", **sections)
    final = tmp_path / "gpu" / "checkpoints" / "step-150"
    out = train(config, step0, final, 150)
    assert "on cuda" in out
    got = losses(final)
    first, last = got[10], got[150]
    print(json.dumps({"compile": compile_blocks, "loss_step10": first, "loss_step150": last}))
    assert last < 0.45 * first, (first, last)
    assert last < 1.6  # the synthetic language's entropy floor is about 1 nat/token
