"""A run's fully resolved trainer config (results/runs/<run>/train.toml), rendered from its config.yaml
entry and the files the workflow produced for it, found by the workflow's path conventions
(lmrepro.workflow): the tokenizer, and per training dataset its train shards or, in streaming mode, its
prepared raw files. Precedence: preset < run overrides < the values the workflow fixes.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from lmrepro.config import (
    INVERSE_FREQUENCY,
    JobConfig,
    dump_toml,
    load_job_config,
    render_job_config,
    token_weights_file,
)
from lmrepro.data.encode import check_shards_match_tokenizer, split_files
from lmrepro.data.shards import INDEX_FILE
from lmrepro.data.spike_tokenizer import load_any_tokenizer
from lmrepro.data.token_weights import write_inverse_frequency_weights
from lmrepro.workflow import (
    raw_dir,
    run_data_mode,
    run_datasets,
    run_fixed_values,
    tokenizer_dir,
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
            check_shards_match_tokenizer(index, tokenizer_dir(settings["tokenizer"]))
            data[name] = {"index": index}
    return data


def render_run_config(run: str, settings: dict) -> JobConfig:
    tokenizer = load_any_tokenizer(tokenizer_dir(settings["tokenizer"]))
    vocab_size = tokenizer.vocab_size
    fixed = run_fixed_values(run, settings, vocab_size=vocab_size, data=run_data(settings))
    job = render_job_config(settings["preset"], settings.get("overrides", {}), fixed)
    weights = token_weights_file(job)
    if weights is not None and job.training.token_weights != INVERSE_FREQUENCY:
        from lmrepro.model.losses import load_token_weights  # torch: not for every render (parse time)

        load_token_weights(weights, vocab_size)  # a file of the wrong length or dtype stops here, named
    if job.training.objective != "mlm":
        return job
    # the mask token and never-masked tokens as ids of the run's tokenizer, now that it exists
    mlm_ids = tokenizer_mlm_ids(job.training.mlm, tokenizer)
    fixed = run_fixed_values(run, settings, vocab_size=vocab_size, data=run_data(settings), mlm_ids=mlm_ids)
    return render_job_config(settings["preset"], settings.get("overrides", {}), fixed)


def run_config_toml(run: str, settings: dict) -> str:
    header = f"# Rendered by lmrepro for run {run!r}: the one record of this run's trainer config.\n"
    return header + dump_toml(render_run_config(run, settings))


def write_run_token_weights(config: str | Path, tokenizer: str | Path, out: str | Path) -> dict:
    """training.token_weights = "inverse_frequency": the weights file of a rendered run, from its training
    shards (data.sources, by token fraction), its cap and SEP weight; SEP is the spike tokenizer's."""
    job = load_job_config(config)
    if job.training.token_weights != INVERSE_FREQUENCY:
        raise ValueError(
            f"{config}: training.token_weights is {job.training.token_weights!r}, not {INVERSE_FREQUENCY!r}"
        )
    tok = load_any_tokenizer(tokenizer)
    sources = [(Path(s.index).parent, s.weight) for s in job.data.sources]
    return write_inverse_frequency_weights(
        out,
        sources,
        job.model.vocab_size,
        cap=job.training.token_weights_cap,
        sep_id=getattr(tok, "sep_id", None),
        sep_weight=job.training.token_weights_sep,
    )


def _flat(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def replaced_results(run: str, settings: dict, results: str | Path = "results") -> str | None:
    """One line saying which finished results of ``run`` a rerun will replace, when its trainer config as
    the workflow renders it now differs from the ``train.toml`` those results were trained with (Snakemake
    then reruns the run and removes each output before its job runs); None when nothing would be replaced
    or the new config cannot be rendered yet (the workflow's own checks report that)."""
    run_dir = Path(results) / "runs" / run
    recorded = run_dir / "train.toml"
    finished = sorted((run_dir / "checkpoints").glob("step-*")) if recorded.is_file() else []
    if not finished:
        return None
    try:
        now = _flat(tomllib.loads(run_config_toml(run, settings)))
        before = _flat(tomllib.loads(recorded.read_text()))
    except Exception:  # noqa: BLE001 - not renderable yet (e.g. a tokenizer still to build)
        return None
    changed = sorted(k for k in now.keys() | before.keys() if now.get(k) != before.get(k))
    if not changed:
        return None
    shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    exports = len(list((run_dir / "export").glob("step-*")))
    evals = len(list((run_dir / "eval").glob("step-*/*.json")))
    return (
        f"runs.{run}: its trainer config changed since {recorded} was written ({shown}{more}); running it "
        f"replaces its {len(finished)} finished checkpoints, {exports} exports and {evals} eval results; to "
        f"keep them, give the changed run a new name (it trains beside the old one) or move {run_dir} away"
    )
