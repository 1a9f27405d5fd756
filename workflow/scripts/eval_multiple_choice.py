"""Score a HellaSwag-format JSONL with lm-eval on an exported HF folder; writes one eval JSON."""

import argparse

from lmrepro.eval.results import add_numerics_arguments, evaluate_multiple_choice_task
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", required=True, help="results/runs/{run}/export/step-{N}")
    parser.add_argument("--jsonl", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--limit", type=int, default=None)
    add_numerics_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    evaluate_multiple_choice_task(
        args.export, args.jsonl, args.task, args.out, limit=args.limit, device=args.device, dtype=args.dtype
    )


if __name__ == "__main__":
    run_main(main)
