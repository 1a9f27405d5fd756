"""Held-out loss/perplexity of a DCP checkpoint on a tokenized split; writes one eval JSON."""

import argparse

from lmrepro.eval.results import add_numerics_arguments, evaluate_loss_task
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--shards", required=True, help="folder of the held-out token shards")
    parser.add_argument("--task", required=True)
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="evals.<task>.max_tokens (absent: the whole split)"
    )
    parser.add_argument(
        "--pseudo-perplexity-tokens", type=int, default=0, help="evals.<task>.pseudo_perplexity_tokens"
    )
    parser.add_argument(
        "--token-weights", help="the run's training.token_weights file: also the weighted loss"
    )
    add_numerics_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    evaluate_loss_task(
        args.checkpoint,
        args.shards,
        args.task,
        args.max_tokens,
        args.out,
        pseudo_perplexity_tokens=args.pseudo_perplexity_tokens,
        token_weights=args.token_weights,
        device=args.device,
        dtype=args.dtype,
    )


if __name__ == "__main__":
    run_main(main)
