"""Encode a JSONL split into binary token shards with index.json (BOS + text + EOS per document)."""

import argparse

from lmrepro.cli import run_main
from lmrepro.data.tokenize import tokenize_to_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input", nargs="+", required=True, help="JSONL files with a `text` field")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder (tokenizer.json)")
    parser.add_argument("--out", required=True, help="results/data/{dataset}/{tokenizer}/{split}")
    parser.add_argument("--shard-tokens", type=int, default=1 << 24, help="tokens per shard (about)")
    args = parser.parse_args()
    tokenize_to_shards(args.input, args.tokenizer, args.out, shard_tokens=args.shard_tokens)


if __name__ == "__main__":
    run_main(main)
