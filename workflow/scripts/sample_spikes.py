"""Spike-train samples of an exported checkpoint: conditional (a test row's first bins, continued) and
unconditional, decoded to count arrays and drawn as rasters beside the real continuation."""

import argparse

from lmrepro.config import load_job_config
from lmrepro.eval.samples import sample_spikes
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", required=True, help="results/runs/{run}/export/step-{N}")
    parser.add_argument("--config", required=True, help="results/runs/{run}/train.toml (the trained seq_len)")
    parser.add_argument("--tokenizer", required=True, help="the run's spike tokenizer folder")
    parser.add_argument("--raw", required=True, help="results/data/{dataset}/raw of the run's spike dataset")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num-rows", type=int, default=3)
    parser.add_argument("--prompt-bins", type=int, default=20)
    parser.add_argument("--gen-bins", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="results/runs/{run}/samples/step-{N}")
    args = parser.parse_args()
    sample_spikes(
        args.export, args.tokenizer, args.raw, args.out, split=args.split, num_rows=args.num_rows,
        prompt_bins=args.prompt_bins, gen_bins=args.gen_bins, seed=args.seed,
        seq_len=load_job_config(args.config).data.seq_len,
    )  # fmt: skip


if __name__ == "__main__":
    run_main(main)
