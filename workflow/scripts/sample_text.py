"""Text samples of a run: its fixed prompts continued greedily and by seeded sampling at each export."""

import argparse
import json

from lmrepro.eval.text_samples import write_text_samples
from lmrepro.logs import run_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--exports", nargs="+", required=True, help="results/runs/{run}/export/step-*")
    parser.add_argument("--settings", required=True, help="runs.<run>.text_samples as JSON")
    parser.add_argument("--out", required=True, help="results/runs/{run}/text_samples.json")
    args = parser.parse_args()
    settings = json.loads(args.settings)
    write_text_samples(args.exports, args.out, **settings)


if __name__ == "__main__":
    run_main(main)
