"""Checks and helpers the Snakefile runs at parse time, so bad config stops before any job starts."""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path
from typing import Any

from lmrepro.config import render_job_config
from lmrepro.data.mixture import check_weights


def segment_boundaries(steps: int, segment_steps: int) -> list[int]:
    """Segment end steps of a run: K, 2K, … and the last step (ceil(S / K) segments)."""
    if steps < 1 or segment_steps < 1:
        raise ValueError(f"steps ({steps}) and segment_steps ({segment_steps}) must be >= 1")
    ends = list(range(segment_steps, steps, segment_steps))
    return ends + [steps]


def _require(mapping: dict, name: str, where: str, what: str) -> None:
    if name not in mapping:
        raise ValueError(f"{where} = {name!r} is not a configured {what}; valid: {sorted(mapping)}")


def _check_local_paths(root: Path, patterns: list[str], where: str) -> None:
    """Local data: each path must exist and each glob match a file (`!glob` excludes, unchecked)."""
    for pattern in patterns:
        if pattern.startswith("!"):
            continue
        if any(c in pattern for c in "*?["):
            if not any((root / m).is_file() for m in glob.glob(pattern, root_dir=root, recursive=True)):
                raise FileNotFoundError(f"{where}: pattern {pattern} matches no file")
        elif not (root / pattern).exists():
            raise FileNotFoundError(f"{where}: file {pattern} does not exist")


def check_config(config: dict[str, Any], root: str | Path = ".") -> None:
    """Cross-reference checks the JSON schema cannot express. Raises naming the config key."""
    root = Path(root)
    datasets, tokenizers = config["datasets"], config["tokenizers"]
    evals = config.get("evals", {})
    for name, spec in datasets.items():
        for split, value in spec.get("files", {}).items():
            _check_local_paths(
                root, [value] if isinstance(value, str) else value, f"datasets.{name}.files.{split}"
            )
    for name, spec in tokenizers.items():
        if spec["kind"] == "bpe":
            _require(datasets, spec["dataset"], f"tokenizers.{name}.dataset", "dataset")
        elif not (root / spec["path"]).exists():
            raise FileNotFoundError(f"tokenizers.{name}.path: {spec['path']} does not exist")
    for name, spec in evals.items():
        _require(datasets, spec["dataset"], f"evals.{name}.dataset", "dataset")
        source = datasets[spec["dataset"]]
        wanted = spec.get("split") or Path(spec["file"]).stem
        if source["source"] == "hub" and spec["kind"] == "multiple_choice":
            raise ValueError(
                f"evals.{name}: multiple_choice reads a JSONL file of a local or synthetic dataset"
            )
        splits = source.get("files") or source.get("splits") or {}
        if source["source"] in ("local", "hub") and wanted not in splits:
            raise ValueError(
                f"evals.{name}: dataset {spec['dataset']!r} has no split {wanted!r}; valid: {sorted(splits)}"
            )
        if source["source"] == "synthetic" and wanted not in ("train", "heldout", "mc"):
            raise ValueError(f"evals.{name}: synthetic datasets have train, heldout and mc, not {wanted!r}")
    bases = config.get("bases", {})
    base_args = {name: _check_base(name, spec, root) for name, spec in bases.items()}
    for run, spec in config["runs"].items():
        where = f"runs.{run}"
        _check_run_data(run, spec, datasets)
        _require(tokenizers, spec["tokenizer"], f"{where}.tokenizer", "tokenizer")
        for task in spec.get("evals", []):
            _require(evals, task, f"{where}.evals[]", "eval")
        if spec["segment_steps"] > spec["steps"]:
            raise ValueError(
                f"{where}.segment_steps = {spec['segment_steps']} exceeds {where}.steps = {spec['steps']}"
            )
        try:
            job = render_job_config(
                root / spec["preset"], spec.get("overrides", {}), run_fixed_values(run, spec, root=root)
            )
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{where}: {e}") from None
        if "init" in spec:
            _require(bases, spec["init"], f"{where}.init", "base")
            _check_run_base(run, spec, job, config, base_args[spec["init"]])


def run_fixed_values(
    run: str,
    spec: dict,
    vocab_size: int = 1 << 16,
    train_index: str | None = None,
    *,
    data: dict[str, dict] | None = None,
    root: str | Path = ".",
) -> dict:
    """Trainer keys the workflow sets itself from config.yaml and the produced files.

    A single dataset in shards mode sets data.train_index (train_index, else its conventional path); a
    mixture or streaming mode sets data.sources, one table per dataset with its weight and `data[name]`
    ({"index": …} or {"files": […], "text_key": …}, from the render step; conventional paths stand in at
    parse time).
    """
    mode = run_data_mode(spec, root)
    datasets = run_datasets(spec)
    if data is None:
        data = {name: _conventional_source(name, spec["tokenizer"], mode) for name in datasets}
    if mode == "shards" and "mixture" not in spec:
        (name,) = datasets
        fixed_data = {"train_index": data[name]["index"] if train_index is None else train_index}
    else:
        fixed_data = {"sources": [{"name": n, "weight": w, **data[n]} for n, w in datasets.items()]}
        if mode == "streaming":
            fixed_data["streaming"] = {"tokenizer": tokenizer_dir(spec["tokenizer"])}
    return {
        "run": run,
        "run_dir": f"results/runs/{run}",
        "model": {"vocab_size": vocab_size},
        "data": fixed_data,
        "training": {"steps": spec["steps"]},
    }


# ------------------------------------------------------------------------------- base checkpoints
# torch is imported only when bases are configured: parsing the default config stays fast.


def _check_base(name: str, spec: dict, root: Path) -> Any:
    """The base's folder exists and its config file describes a Llama; returns its ModelArgs."""
    from lmrepro.checkpoint.convert import read_base_args

    path = root / spec["path"]
    if not path.is_dir():
        raise FileNotFoundError(f"bases.{name}.path: {spec['path']} is not a folder")
    try:
        return read_base_args(spec["format"], path)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"bases.{name}: {e}") from None


def _check_run_base(run: str, spec: dict, job: Any, config: dict[str, Any], base_args: Any) -> None:
    """A run started from a base has the base's architecture, and its vocabulary unless the base's
    `vocab` policy is drop or resize (lmrepro.checkpoint.init_base checks again against the converted
    checkpoint and the trained tokenizer)."""
    from lmrepro.checkpoint.init_base import check_base_shape
    from lmrepro.model.flavors import model_args

    base = spec["init"]
    try:
        run_args = model_args(job.model.flavor, job.model.vocab_size, **job.model.overrides)
        check_base_shape(run_args, base_args, base)
    except ValueError as e:
        raise ValueError(f"runs.{run}: {e}") from None
    vocab = config["tokenizers"][spec["tokenizer"]].get("vocab_size")
    policy = config["bases"][base].get("vocab", "keep")
    if policy == "keep" and base_args.vocab_size > 0 and vocab is not None and vocab != base_args.vocab_size:
        raise ValueError(
            f"runs.{run}.init: base {base} has {base_args.vocab_size} tokens but tokenizer "
            f"{spec['tokenizer']} has {vocab}; set bases.{base}.vocab to drop or resize"
        )


# ---------------------------------------------------------------------------------- training data


def run_datasets(spec: dict) -> dict[str, float]:
    """A run's training datasets and weights (token fractions), sorted by name: `dataset` or `mixture`."""
    if "mixture" in spec:
        return dict(sorted(spec["mixture"].items()))
    return {spec["dataset"]: 1.0}


def raw_dir(dataset: str) -> str:
    return f"results/data/{dataset}/raw"


def train_shards_dir(dataset: str, tokenizer: str) -> str:
    return f"results/data/{dataset}/{tokenizer}/train"


def tokenizer_dir(tokenizer: str) -> str:
    return f"results/tokenizers/{tokenizer}"


def _conventional_source(dataset: str, tokenizer: str, mode: str) -> dict:
    if mode == "streaming":
        return {"files": [raw_dir(dataset)]}
    return {"index": f"{train_shards_dir(dataset, tokenizer)}/index.json"}


def run_data_mode(spec: dict, root: str | Path = ".") -> str:
    """data.mode of a run (overrides, else its preset, else shards); the strict render reports bad values."""
    mode = spec.get("overrides", {}).get("data", {}).get("mode")
    preset = Path(root) / spec["preset"]
    if mode is None and preset.is_file():
        try:
            mode = tomllib.loads(preset.read_text()).get("data", {}).get("mode")
        except tomllib.TOMLDecodeError:
            mode = None
    return mode if mode in ("shards", "streaming") else "shards"


def _check_run_data(run: str, spec: dict, datasets: dict) -> None:
    """Exactly one of runs.<run>.dataset / .mixture; named datasets exist; weights are token fractions."""
    where = f"runs.{run}"
    if ("dataset" in spec) == ("mixture" in spec):
        raise ValueError(
            f"{where}: set exactly one of `dataset` (one dataset) or `mixture` ({{dataset: weight, ...}})"
        )
    if "dataset" in spec:
        _require(datasets, spec["dataset"], f"{where}.dataset", "dataset")
        return
    for name in spec["mixture"]:
        _require(datasets, name, f"{where}.mixture.{name}", "dataset")
    check_weights(spec["mixture"], f"{where}.mixture")
