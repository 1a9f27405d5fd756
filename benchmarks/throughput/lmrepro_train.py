"""workflow/scripts/train.py with the benchmark's numerics switches patched in from outside the trainer.

LMREPRO_BENCH_FLOAT8 = off | tensorwise | rowwise: torchao float8 on every Linear but the output layer,
applied to the meta-device model before compile (lmrepro.train.float8.apply_float8).
LMREPRO_BENCH_RESIDUAL = bf16 | fp32: fp32 puts the first block's input back in fp32, so that under
autocast the residual stream stays fp32 as in torchtitan's one-GPU path (the default, bf16, is lmrepro's
one-GPU numerics: the embedding output cast to bf16, as FSDP's bf16 parameters give).
"""

import os
import runpy
import sys

from lmrepro.train import trainer
from lmrepro.train.float8 import apply_float8

FLOAT8 = os.environ.get("LMREPRO_BENCH_FLOAT8", "off")
RESIDUAL = os.environ.get("LMREPRO_BENCH_RESIDUAL", "bf16")
_parallelize = trainer.parallelize


def parallelize(model, mesh, dtype, **kwargs):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = apply_float8(model, FLOAT8, device)
    if n:
        print(f"float8 {FLOAT8}: {n} Linear layers converted", flush=True)
    _parallelize(model, mesh, dtype, **kwargs)
    if RESIDUAL == "fp32":
        first = next(iter(model.layers.values()))
        first.register_forward_pre_hook(lambda module, args: (args[0].float(), *args[1:]))


trainer.parallelize = parallelize
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name="__main__")
