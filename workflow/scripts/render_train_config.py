"""Render a run's fully resolved train.toml from its config.yaml entry, the tokenizer and the shards."""

import argparse
import json
from pathlib import Path

from lmrepro.cli import run_main
from lmrepro.config import dump_toml, render_job_config
from lmrepro.data.tokenizer import load_tokenizer
from lmrepro.workflow import run_fixed_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--settings", required=True, help="the run's entry of config.yaml, as JSON")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json of the run")
    parser.add_argument("--train-index", required=True, help="index.json of the training shards")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = json.loads(args.settings)
    vocab_size = load_tokenizer(args.tokenizer).vocab_size
    fixed = run_fixed_values(args.run, settings, vocab_size=vocab_size, train_index=args.train_index)
    job = render_job_config(settings["preset"], settings.get("overrides", {}), fixed)
    header = f"# Rendered by lmrepro for run {args.run!r}: the one record of this run's trainer config.\n"
    Path(args.out).write_text(header + dump_toml(job))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
