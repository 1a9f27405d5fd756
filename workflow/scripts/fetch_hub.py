"""Fetch a base or a pretrained tokenizer from the Hugging Face Hub into the cache (results/hub/...)."""

import argparse
import json

from lmrepro.hub import fetch
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--section", required=True, choices=["bases", "tokenizers"], help="config section")
    parser.add_argument("--name", required=True, help="the entry's name in that section")
    parser.add_argument("--spec", required=True, help="the entry of config.yaml, as JSON")
    parser.add_argument("--max-workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--out", required=True, help="results/hub/{section}/{name}")
    args = parser.parse_args()
    where = f"{args.section}.{args.name}"
    manifest = fetch(where, args.section, json.loads(args.spec), args.out, max_workers=args.max_workers)
    print(f"fetched {manifest['repo']} at {manifest['commit']}: {len(manifest['files'])} files → {args.out}")


if __name__ == "__main__":
    run_main(main)
