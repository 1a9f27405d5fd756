"""Encode one split of a prepared dataset (or data files) into binary token shards with index.json: text
documents, or spike-count rows (the manifest's lab filter and n_fixed; a spike tokenizer folder).

Parallel over pieces of the input; restartable: finished shards wait in a work folder next to --out.
"""

import argparse

from lmrepro.data.encode import DEFAULT_PIECE_BYTES, tokenize_to_shards
from lmrepro.data.packing import PACKING_MODES, Packing
from lmrepro.data.sources import spike_rows_of, split_files
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--raw", help="a prepared dataset (results/data/{dataset}/raw); needs --split")
    source.add_argument("--input", nargs="+", help="JSONL/Parquet/Arrow/text files")
    parser.add_argument("--split", help="the split of --raw to encode")
    parser.add_argument("--text-field", default="text", help="with --input: the field holding the text")
    parser.add_argument("--tokenizer", required=True, help="results/tokenizers/{tokenizer}")
    parser.add_argument("--out", required=True, help="results/data/{dataset}/{tokenizer}/{split}")
    parser.add_argument("--packing", choices=PACKING_MODES, default="bos_eos", help="joining documents")
    parser.add_argument("--separator-token", help="--packing separator: the token before each document")
    parser.add_argument("--num-proc", type=int, default=1, help="encoding processes")
    parser.add_argument("--piece-bytes", type=int, default=DEFAULT_PIECE_BYTES, help="input bytes per shard")
    args = parser.parse_args()
    if args.raw and not args.split:
        parser.error("--raw needs --split")
    files, text_field = split_files(args.raw, args.split) if args.raw else (args.input, args.text_field)
    tokenize_to_shards(
        files,
        args.tokenizer,
        args.out,
        text_field=text_field,
        spike_rows=spike_rows_of(args.raw) if args.raw else None,
        packing=Packing(args.packing, args.separator_token),
        piece_bytes=args.piece_bytes,
        num_proc=args.num_proc,
    )


if __name__ == "__main__":
    run_main(main)
