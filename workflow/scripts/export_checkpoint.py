"""Export a DCP checkpoint's model to consolidated.pth + params.json and a Hugging Face folder (hf/)."""

import argparse

from lmrepro.checkpoint.export import export_checkpoint
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="results/runs/{run}/checkpoints/step-{N}")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder copied into hf/")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", required=True, help="results/runs/{run}/export/step-{N}")
    args = parser.parse_args()
    export_checkpoint(args.checkpoint, args.out, tokenizer_dir=args.tokenizer, dtype=args.dtype)


if __name__ == "__main__":
    run_main(main)
