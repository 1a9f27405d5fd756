"""On a CUDA GPU (`pytest -m gpu` through the device tool): the numerics switches train through the real
trainer and converge like plain bf16: torchao float8 (tensorwise, rowwise; compiled and eager), the fp32
residual stream, cuDNN attention forced, and the flash-attn package path where it is installed; each run
saves and reloads its DCP checkpoint (the float8 Linears' state dict is the plain one)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from trainer_processes import losses, setup_run, train, weights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with the device tool)"),
]

HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None

CASES = {
    "float8-tensorwise-compiled": ({"float8": "tensorwise", "compile": True}, HAS_TORCHAO),
    "float8-rowwise": ({"float8": "rowwise"}, HAS_TORCHAO),
    "fp32-residual": ({"residual_dtype": "float32"}, True),
    "cudnn-attention": ({"attention_backend": "cudnn"}, True),
    "flash-attn-package": ({"attention_backend": "flash_attn"}, HAS_FLASH_ATTN),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_numerics_switch_converges_and_checkpoints(tmp_path, tiny_data, case):
    extra, available = CASES[case]
    if not available:
        pytest.skip(f"{case}: its package is not installed here")
    sections = {
        "model": {"flavor": "debug", "vocab_size": 300, "overrides": {}},
        "data": {"seq_len": 128},
        "training": {"steps": 100, "global_batch_tokens": 8192, "dtype": "bfloat16", **extra},
        "schedule": {"warmup_steps": 10},
        "metrics": {"log_every_steps": 10, "tensorboard": False},
        "checkpoint": {"interval_steps": 50},
    }
    config, step0 = setup_run(tmp_path, tiny_data, "gpu", **sections)
    half = tmp_path / "gpu" / "checkpoints" / "step-50"
    final = tmp_path / "gpu" / "checkpoints" / "step-100"
    out = train(config, step0, half, 50)
    assert "on cuda" in out
    if "float8" in extra:
        assert f"float8 {extra['float8']}:" in out and "Linear layers converted" in out
    train(config, half, final, 100)  # a second segment loads the first one's DCP
    got = {**losses(half), **losses(final)}
    print(json.dumps({"case": case, "loss_step10": got[10], "loss_step100": got[100]}))
    assert got[100] < 0.5 * got[10], (got[10], got[100])
    assert all(w.dtype == torch.float32 for w in weights(final).values())  # plain fp32 master weights
