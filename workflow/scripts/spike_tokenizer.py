"""A spike tokenizer folder: byte mode (no arguments but --out), a patch tokenizer built from a prepared
spike dataset's train split (--raw), or a patch tokenizer folder built earlier, checked and copied
(--import)."""

import argparse

from lmrepro.data.spike_tokenizer import write_spike_tokenizer
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--raw", help="results/data/{dataset}/raw of a spike dataset: build from its train split"
    )
    source.add_argument("--import", dest="folder", help="a patch tokenizer folder to check and copy")
    parser.add_argument("--patch", type=int, nargs=2, metavar=("P0", "P1"), help="neurons x bins per patch")
    parser.add_argument("--vocab-size", type=int, help="V: patches + SEP + UNK")
    parser.add_argument("--out", required=True, help="results/tokenizers/{tokenizer}")
    args = parser.parse_args()
    if (args.raw or args.folder) and not (args.patch and args.vocab_size):
        parser.error("a patch tokenizer needs --patch and --vocab-size")
    write_spike_tokenizer(
        args.out, raw=args.raw, folder=args.folder, patch=args.patch, vocab_size=args.vocab_size
    )


if __name__ == "__main__":
    run_main(main)
