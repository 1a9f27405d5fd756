"""Raw documents of one dataset into --out: generated (synthetic) or copied (local), plus manifest.json."""

import argparse
import json

from lmrepro.cli import run_main
from lmrepro.data.sources import prepare_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="the dataset's entry of config.yaml, as JSON")
    parser.add_argument("--out", required=True, help="results/data/{dataset}/raw")
    args = parser.parse_args()
    prepare_dataset(json.loads(args.spec), args.out)


if __name__ == "__main__":
    run_main(main)
