"""Every tiny twin of a seed preset (config/experiments/tiny-<seed>.yaml) runs to its report, all of them in
one Snakemake invocation: `--configfile a.yaml b.yaml …` deep-merges the files (Snakemake's update_config:
mappings merged key by key, so the twins' runs add up and the entries they share — the BPE, its dataset,
the Zyda-like sources — are one entry, defined identically in every file)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import REPO, copy_workflow
from test_workflow import snakemake

pytestmark = pytest.mark.slow

TWINS = [
    "tiny-gpt-neuro-arch.yaml",
    "tiny-gpt-neuro-8b-131k.yaml",
    "tiny-training-custom-llama.yaml",
    "tiny-llemma.yaml",
    "tiny-torchtitan-mlm.yaml",
    "tiny-frontier-torchtitan.yaml",
]
# llm-pytorch's twin (GPT-Neo on a WikiText-2 stand-in, AdamW and K-FAC, plain concatenation) runs to its
# report in test_wikitext_kfac.py, where its perplexity curves are checked too.


def merged_runs() -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for twin in TWINS:
        twin_runs = yaml.safe_load((REPO / "config" / "experiments" / twin).read_text())["runs"]
        assert not set(runs) & set(twin_runs), f"{twin} reuses a run name"
        runs |= twin_runs
    return runs


def test_the_twins_share_only_identical_entries() -> None:
    """The merge is a union only if an entry two files define is the same in both."""
    seen: dict[tuple[str, str], tuple[str, object]] = {}
    for twin in TWINS:
        config = yaml.safe_load((REPO / "config" / "experiments" / twin).read_text())
        for section in ("datasets", "tokenizers", "evals", "bases"):
            for name, spec in config.get(section, {}).items():
                first = seen.setdefault((section, name), (twin, spec))
                assert first[1] == spec, f"{section}.{name} differs between {first[0]} and {twin}"


def test_every_twin_runs_to_its_report(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "twins")
    files = [f"config/experiments/{twin}" for twin in TWINS]
    result = snakemake(workdir, "all", "--configfile", *files)
    assert result.returncode == 0, result.stderr[-6000:]
    results = workdir / "results"
    runs = merged_runs()
    for run, spec in runs.items():
        last = spec["steps"]
        rows = [json.loads(r) for r in (results / f"runs/{run}/checkpoints/step-{last}/metrics.jsonl").open()]
        losses = [row["loss"] for row in rows if "loss" in row]
        assert losses and all(math.isfinite(x) for x in losses), run
        assert max(row["step"] for row in rows) == last, run
        if "validation" in spec:  # held-out loss inside the training job, on the seed's cadence
            val = [row["val_loss"] for row in rows if "val_loss" in row]
            assert val and all(math.isfinite(x) for x in val), run
        for task in spec["evals"]:
            result_file = results / f"runs/{run}/eval/step-{last}/{task}.json"
            metrics = json.loads(result_file.read_text())["metrics"]
            assert all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)), (run, task)
    # training-custom-llama's packing: one <|end_of_text|> (the BPE's id 1) before each document, none after
    index = json.loads((results / "data/twin-fineweb/twin-bpe/train/index.json").read_text())
    assert index["packing"] == {
        "mode": "separator", "separator_token": "<|end_of_text|>", "prefix_ids": [1], "suffix_ids": []
    }  # fmt: skip
    summary = (results / "report" / "summary.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in summary[1:]} >= set(runs)
    report = snakemake(workdir, "--report", "results/twins.html", "--configfile", *files)
    assert report.returncode == 0, report.stderr[-3000:]
    assert (workdir / "results" / "twins.html").stat().st_size > 0
