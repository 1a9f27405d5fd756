"""Render a run's fully resolved train.toml from its config.yaml entry; the tokenizer and the training data
(each dataset's train shards, or its prepared raw folder in streaming mode) are found by the workflow's path
conventions (lmrepro.workflow)."""

import argparse
import json
from pathlib import Path

from lmrepro.logs import run_main
from lmrepro.run_config import run_config_toml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--settings", required=True, help="the run's entry of config.yaml, as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Path(args.out).write_text(run_config_toml(args.run, json.loads(args.settings)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
