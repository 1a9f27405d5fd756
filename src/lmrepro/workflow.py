"""Checks and helpers the Snakefile runs at parse time, so bad config stops before any job starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmrepro.config import render_job_config


def segment_boundaries(steps: int, segment_steps: int) -> list[int]:
    """Segment end steps of a run: K, 2K, … and the last step (ceil(S / K) segments)."""
    if steps < 1 or segment_steps < 1:
        raise ValueError(f"steps ({steps}) and segment_steps ({segment_steps}) must be >= 1")
    ends = list(range(segment_steps, steps, segment_steps))
    return ends + [steps]


def _require(mapping: dict, name: str, where: str, what: str) -> None:
    if name not in mapping:
        raise ValueError(f"{where} = {name!r} is not a configured {what}; valid: {sorted(mapping)}")


def check_config(config: dict[str, Any], root: str | Path = ".") -> None:
    """Cross-reference checks the JSON schema cannot express. Raises naming the config key."""
    root = Path(root)
    datasets, tokenizers = config["datasets"], config["tokenizers"]
    evals = config.get("evals", {})
    for name, spec in datasets.items():
        for split, path in spec.get("files", {}).items():
            if not (root / path).is_file():
                raise FileNotFoundError(f"datasets.{name}.files.{split}: file {path} does not exist")
    for name, spec in tokenizers.items():
        _require(datasets, spec["dataset"], f"tokenizers.{name}.dataset", "dataset")
    for name, spec in evals.items():
        _require(datasets, spec["dataset"], f"evals.{name}.dataset", "dataset")
        source = datasets[spec["dataset"]]
        wanted = spec.get("split") or Path(spec["file"]).stem
        if source["source"] == "local" and wanted not in source["files"]:
            raise ValueError(
                f"evals.{name}: dataset {spec['dataset']!r} has no split {wanted!r}; "
                f"valid: {sorted(source['files'])}"
            )
        if source["source"] == "synthetic" and wanted not in ("train", "heldout", "mc"):
            raise ValueError(f"evals.{name}: synthetic datasets have train, heldout and mc, not {wanted!r}")
    for run, spec in config["runs"].items():
        where = f"runs.{run}"
        _require(datasets, spec["dataset"], f"{where}.dataset", "dataset")
        _require(tokenizers, spec["tokenizer"], f"{where}.tokenizer", "tokenizer")
        for task in spec.get("evals", []):
            _require(evals, task, f"{where}.evals[]", "eval")
        if spec["segment_steps"] > spec["steps"]:
            raise ValueError(
                f"{where}.segment_steps = {spec['segment_steps']} exceeds {where}.steps = {spec['steps']}"
            )
        try:
            render_job_config(root / spec["preset"], spec.get("overrides", {}), run_fixed_values(run, spec))
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{where}: {e}") from None


def run_fixed_values(run: str, spec: dict, vocab_size: int = 1 << 16, train_index: str = "") -> dict:
    """Trainer keys the workflow sets itself from config.yaml and the produced files."""
    return {
        "run": run,
        "run_dir": f"results/runs/{run}",
        "model": {"vocab_size": vocab_size},
        "data": {"train_index": train_index},
        "training": {"steps": spec["steps"]},
    }
