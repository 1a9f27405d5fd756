"""Score a HellaSwag-format JSONL with lm-eval on an exported HF folder; writes one eval JSON."""

import argparse

from lmrepro.eval.results import EVAL_DEVICES, EVAL_DTYPES, evaluate_multiple_choice_task
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", required=True, help="results/runs/{run}/export/step-{N}")
    parser.add_argument("--jsonl", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument(
        "--device",
        choices=EVAL_DEVICES,
        default="auto",
        help="evals.<task>.device (auto: the job's GPU if any)",
    )
    parser.add_argument("--dtype", choices=sorted(EVAL_DTYPES), default="float32", help="evals.<task>.dtype")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    evaluate_multiple_choice_task(
        args.export, args.jsonl, args.task, args.out, limit=args.limit, device=args.device, dtype=args.dtype
    )


if __name__ == "__main__":
    run_main(main)
