"""Render a run's fully resolved train.toml from its config.yaml entry, the tokenizer and the training data
(the token shards of each dataset, or their prepared raw folders in streaming mode)."""

import argparse
import json
from pathlib import Path

from lmrepro.config import dump_toml, render_job_config
from lmrepro.data.tokenize import check_shards_match_tokenizer, split_files
from lmrepro.data.tokenizer import load_tokenizer
from lmrepro.logs import run_main
from lmrepro.workflow import run_data_mode, run_datasets, run_fixed_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True)
    parser.add_argument("--settings", required=True, help="the run's entry of config.yaml, as JSON")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json of the run")
    parser.add_argument(
        "--train-data",
        nargs="+",
        required=True,
        help="per training dataset (sorted by name): its train shards folder, or raw folder (streaming)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    settings = json.loads(args.settings)
    vocab_size = load_tokenizer(args.tokenizer).vocab_size
    datasets = list(run_datasets(settings))
    if len(datasets) != len(args.train_data):
        parser.error(f"--train-data needs one folder per dataset {datasets}, got {args.train_data}")
    data = {}
    for name, folder in zip(datasets, args.train_data, strict=True):
        if run_data_mode(settings) == "streaming":
            files, text_field = split_files(folder, "train")
            data[name] = {"files": [str(f) for f in files], "text_key": text_field}
        else:
            index = f"{folder}/index.json"
            check_shards_match_tokenizer(index, args.tokenizer)  # shards of another tokenizer: stop
            data[name] = {"index": index}
    fixed = run_fixed_values(args.run, settings, vocab_size=vocab_size, data=data)
    job = render_job_config(settings["preset"], settings.get("overrides", {}), fixed)
    header = f"# Rendered by lmrepro for run {args.run!r}: the one record of this run's trainer config.\n"
    Path(args.out).write_text(header + dump_toml(job))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
