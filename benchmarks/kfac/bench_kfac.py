"""K-FAC's step-time overhead: AdamW vs K-FAC + AdamW on the same model and batches, same process.

A GPT-Neo of the llm-pytorch seed's family (transformers' `GPTNeoForCausalLM`, built from a config),
fp32 on CPU, one step = forward/backward of `--accum` micro-batches, then (K-FAC only) `KFAC.step(lr)`,
then AdamW. K-FAC runs the seed's schedule of updates (`--factor-every`, `--inv-every`): factor updates
and eigendecompositions are amortised over the steps, so the mean over `--steps` steps is what a run pays.

    python benchmarks/kfac/bench_kfac.py [--out benchmarks/kfac/results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from transformers import GPTNeoConfig, GPTNeoForCausalLM

from lmrepro.train.kfac import KFAC, KFACConfig


def model_of(args) -> torch.nn.Module:
    torch.manual_seed(0)
    config = GPTNeoConfig(
        vocab_size=args.vocab,
        hidden_size=args.dim,
        num_layers=args.layers,
        num_heads=args.heads,
        attention_types=[[["global", "local"], args.layers // 2]],
        max_position_embeddings=args.seq,
        intermediate_size=4 * args.dim,
    )
    return GPTNeoForCausalLM(config)


def mean_step_s(args, use_kfac: bool) -> float:
    model = model_of(args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    kfac = (
        KFAC(model, KFACConfig(factor_update_steps=args.factor_every, inv_update_steps=args.inv_every))
        if use_kfac
        else None
    )
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, args.vocab, (args.micro, args.seq), generator=gen) for _ in range(args.accum)]
    times = []
    for step in range(args.warmup + args.steps):
        started = time.perf_counter()
        for ids in batches:
            (model(input_ids=ids, labels=ids).loss / args.accum).backward()
        if kfac is not None:
            kfac.step(1e-4)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--factor-every", type=int, default=1)
    parser.add_argument("--inv-every", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    adamw = mean_step_s(args, use_kfac=False)
    kfac = mean_step_s(args, use_kfac=True)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "settings": vars(args),
        "adamw_step_s": adamw,
        "kfac_adamw_step_s": kfac,
        "kfac_overhead_ratio": kfac / adamw,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
