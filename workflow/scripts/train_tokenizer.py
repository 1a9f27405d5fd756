"""Train a byte-level BPE on a dataset's train split (or on data files); save it as a Hugging Face folder."""

import argparse

from lmrepro.data.encode import split_files
from lmrepro.data.tokenizer import load_tokenizer, train_bpe
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw", help="a prepared dataset (results/data/{dataset}/raw): its train split")
    source.add_argument("--train", nargs="+", help="data files to learn merges from (`text` field)")
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--out", required=True, help="results/tokenizers/{tokenizer}")
    args = parser.parse_args()
    files, text_field = split_files(args.raw, "train") if args.raw else (args.train, "text")
    out = train_bpe(files, args.vocab_size, args.out, text_field=text_field)
    tok = load_tokenizer(out)
    print(f"trained BPE: vocab {tok.vocab_size}, bos {tok.bos_id}, eos {tok.eos_id} → {out}")


if __name__ == "__main__":
    run_main(main)
