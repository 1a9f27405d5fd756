"""The n-gram baseline of a run (evals.<task>.kind = ngram): Laplace-smoothed counts of its training shards,
nats per token on the targets its loss evals score; writes one JSON."""

import argparse

from lmrepro.config import load_job_config
from lmrepro.eval.results import evaluate_ngram_task
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="results/runs/{run}/train.toml (run name, seq_len)")
    parser.add_argument("--train", nargs="+", required=True, help="the run's training shard folders")
    parser.add_argument("--shards", required=True, help="the held-out split's shard folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--n", type=int, required=True, help="evals.<task>.n")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="evals.<task>.max_tokens (absent: the whole split)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    job = load_job_config(args.config)
    evaluate_ngram_task(
        job.run, args.train, args.shards, args.task, n=args.n, max_tokens=args.max_tokens,
        seq_len=job.data.seq_len, out=args.out,
    )  # fmt: skip


if __name__ == "__main__":
    run_main(main)
