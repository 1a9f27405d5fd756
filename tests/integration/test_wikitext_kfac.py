"""Issue 15's WikiText comparison as a user runs it: `config/experiments/tiny-wikitext-kfac.yaml` (a tiny
GPT-Neo with AdamW and with K-FAC + AdamW on the WikiText-2 stand-in) to its report, where one figure holds
both runs' held-out perplexity at every evaluated step."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
import pytest
import yaml
from helpers import copy_workflow
from test_workflow import snakemake

pytestmark = pytest.mark.slow

EXPERIMENT = "config/experiments/tiny-wikitext-kfac.yaml"


def test_adamw_and_kfac_perplexity_on_wikitext_format_data(tmp_path) -> None:
    workdir = copy_workflow(tmp_path / "wf")
    result = snakemake(workdir, "all", "--configfile", EXPERIMENT)
    assert result.returncode == 0, result.stderr[-5000:]
    report = snakemake(workdir, "--report", "results/report/report.html", "--configfile", EXPERIMENT)
    assert report.returncode == 0, report.stderr[-5000:]
    assert (workdir / "results/report/report.html").stat().st_size > 0

    # The data is in the wikitext-2-raw-v1 schema: a `text` column, train / validation / test Parquet.
    raw = workdir / "results/data/wikitext/raw"
    for split in ("train", "validation", "test"):
        table = pq.read_table(raw / f"{split}.parquet")
        assert table.schema.names == ["text"]
    lines = pq.read_table(raw / "validation.parquet").column("text").to_pylist()
    assert lines[:2] == ["", lines[1]] and lines[1].startswith(" = ") and lines[1].endswith(" = \n")

    spec = yaml.safe_load((workdir / EXPERIMENT).read_text())
    assert spec["runs"]["wikitext-kfac"]["overrides"]["optimizer"]["kfac"]["enabled"]
    steps = [0, 10, 20]
    perplexity = {}
    for run in ("wikitext-adamw", "wikitext-kfac"):
        evals = [json.loads((workdir / f"results/runs/{run}/eval/step-{s}/validation.json").read_text())
                 for s in steps]  # fmt: skip
        perplexity[run] = [e["metrics"]["perplexity"] for e in evals]
        assert [e["metrics"]["perplexity"] for e in evals] == pytest.approx(
            [math.exp(e["metrics"]["loss"]) for e in evals]
        )
        assert perplexity[run][-1] < 0.3 * perplexity[run][0]  # both optimizers learn in 20 steps
    assert perplexity["wikitext-adamw"][1:] != perplexity["wikitext-kfac"][1:]  # K-FAC changed the updates

    # One figure, both curves, one point per evaluated step.
    svg = (workdir / "results/report/perplexity.svg").read_text()
    assert "wikitext-adamw: validation" in svg and "wikitext-kfac: validation" in svg
    summary = (workdir / "results/report/summary.csv").read_text().splitlines()
    assert summary[0].startswith("run,step,tokens_seen,train_loss,validation/loss,validation/perplexity")
    assert len(summary) == 1 + 2 * len(steps)
