"""Train a byte-level BPE on JSONL documents (`text` field) and save it as a Hugging Face folder."""

import argparse

from lmrepro.cli import run_main
from lmrepro.data.tokenizer import load_tokenizer, train_bpe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", nargs="+", required=True, help="JSONL files to learn merges from")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--out", required=True, help="results/tokenizers/{tokenizer}")
    args = parser.parse_args()
    out = train_bpe(args.train, args.vocab_size, args.out)
    tok = load_tokenizer(out)
    print(f"trained BPE: vocab {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_id} → {out}")


if __name__ == "__main__":
    run_main(main)
