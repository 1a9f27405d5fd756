"""Score one of lm-eval's built-in tasks (offline, from the local datasets cache) on an exported HF folder;
writes one eval JSON."""

import argparse

from lmrepro.eval.results import add_numerics_arguments, evaluate_lm_eval_task
from lmrepro.logs import run_main


def _optional_int(text: str) -> int | None:
    return None if text in ("", "None") else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", required=True, help="results/runs/{run}/export/step-{N}")
    parser.add_argument("--task", required=True, help="the eval's name in config.evals")
    parser.add_argument(
        "--lm-eval-task", required=True, help="evals.<task>.task: lm-eval's task or group name"
    )
    parser.add_argument("--num-fewshot", type=_optional_int, default=None, help="None: the task's default")
    parser.add_argument("--limit", type=_optional_int, default=None)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-gen-toks", type=_optional_int, default=None, help="generative tasks")
    add_numerics_arguments(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    evaluate_lm_eval_task(
        args.export,
        args.task,
        args.lm_eval_task,
        args.out,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        batch_size=args.batch_size,
        max_gen_toks=args.max_gen_toks,
        device=args.device,
        dtype=args.dtype,
    )


if __name__ == "__main__":
    run_main(main)
