"""Raw documents of one dataset into --out: generated (synthetic), local files, or a Hub snapshot, plus
manifest.json. HF_TOKEN, HF_HUB_OFFLINE and HF_HUB_CACHE/HF_HOME come from the environment."""

import argparse
import json

from lmrepro.data.sources import prepare_dataset
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="the dataset's entry of config.yaml, as JSON")
    parser.add_argument("--name", default="dataset", help="the dataset's name in config.yaml (for messages)")
    parser.add_argument("--max-workers", type=int, default=8, help="parallel downloads and checksums")
    parser.add_argument("--out", required=True, help="results/data/{dataset}/raw")
    args = parser.parse_args()
    prepare_dataset(json.loads(args.spec), args.out, name=args.name, max_workers=args.max_workers)


if __name__ == "__main__":
    run_main(main)
