"""Write a stand-in base checkpoint (bases.<name>.source: synthetic) with transformers."""

import argparse
import json

from lmrepro.checkpoint.standin_base import write_standin_base
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="the base's entry of config.yaml, as JSON")
    parser.add_argument("--out", required=True, help="results/init/{base}/standin")
    args = parser.parse_args()
    print(f"wrote {write_standin_base(json.loads(args.spec), args.out)}")


if __name__ == "__main__":
    run_main(main)
