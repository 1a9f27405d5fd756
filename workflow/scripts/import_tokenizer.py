"""Import a pretrained tokenizer (hf folder, Llama-3 tiktoken or SentencePiece tokenizer.model) into --out."""

import argparse
import json

from lmrepro.data.tokenizer_import import import_tokenizer
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="the tokenizer's entry of config.yaml, as JSON")
    parser.add_argument("--name", default="tokenizer", help="the tokenizer's name in config.yaml")
    parser.add_argument("--out", required=True, help="results/tokenizers/{tokenizer}")
    args = parser.parse_args()
    tok = import_tokenizer(json.loads(args.spec), args.out, name=args.name)
    print(f"imported {tok.kind}: vocab {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_id} → {args.out}")


if __name__ == "__main__":
    run_main(main)
