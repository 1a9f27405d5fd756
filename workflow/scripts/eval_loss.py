"""Held-out loss/perplexity of a DCP checkpoint on a tokenized split; writes one eval JSON."""

import argparse

from lmrepro.eval.results import evaluate_loss_task
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--index", required=True, help="index.json of the held-out shards")
    parser.add_argument("--task", required=True)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    evaluate_loss_task(args.checkpoint, args.index, args.task, args.max_tokens, args.out)


if __name__ == "__main__":
    run_main(main)
