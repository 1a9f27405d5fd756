"""A run's fully resolved trainer config (results/runs/<run>/train.toml), rendered from its config.yaml
entry and the files the workflow produced for it, found by the workflow's path conventions
(lmrepro.workflow): the tokenizer, and per training dataset its train shards or, in streaming mode, its
prepared raw files. Precedence: preset < run overrides < the values the workflow fixes.
"""

from __future__ import annotations

from lmrepro.config import JobConfig, dump_toml, render_job_config
from lmrepro.data.encode import check_shards_match_tokenizer, split_files
from lmrepro.data.shards import INDEX_FILE
from lmrepro.data.tokenizer import load_tokenizer
from lmrepro.workflow import (
    raw_dir,
    run_data_mode,
    run_datasets,
    run_fixed_values,
    tokenizer_file,
    tokenizer_mlm_ids,
    train_shards_dir,
)


def run_data(settings: dict) -> dict[str, dict]:
    """Per training dataset (by name): {"index": …} of its train shards, or its raw files (streaming)."""
    data = {}
    for name in run_datasets(settings):
        if run_data_mode(settings) == "streaming":
            files, text_field = split_files(raw_dir(name), "train")
            data[name] = {"files": [str(f) for f in files], "text_key": text_field}
        else:
            index = f"{train_shards_dir(name, settings['tokenizer'])}/{INDEX_FILE}"
            # shards written with another tokenizer: stop before training on them
            check_shards_match_tokenizer(index, tokenizer_file(settings["tokenizer"]))
            data[name] = {"index": index}
    return data


def render_run_config(run: str, settings: dict) -> JobConfig:
    tokenizer = load_tokenizer(tokenizer_file(settings["tokenizer"]))
    fixed = run_fixed_values(run, settings, vocab_size=tokenizer.vocab_size, data=run_data(settings))
    job = render_job_config(settings["preset"], settings.get("overrides", {}), fixed)
    if job.training.objective != "mlm":
        return job
    # the mask token and never-masked tokens as ids of the run's tokenizer, now that it exists
    mlm_ids = tokenizer_mlm_ids(job.training.mlm, tokenizer)
    fixed = run_fixed_values(
        run, settings, vocab_size=tokenizer.vocab_size, data=run_data(settings), mlm_ids=mlm_ids
    )
    return render_job_config(settings["preset"], settings.get("overrides", {}), fixed)


def run_config_toml(run: str, settings: dict) -> str:
    header = f"# Rendered by lmrepro for run {run!r}: the one record of this run's trainer config.\n"
    return header + dump_toml(render_run_config(run, settings))
