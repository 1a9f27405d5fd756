"""The whole workflow on a small test config in a temporary directory, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import copy_workflow, small_experiment

pytestmark = pytest.mark.slow

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Fake credentials in every job's environment: no file the workflow writes may contain them.
SECRETS = {"HF_TOKEN": "hf_FAKEtokenLmreproLeakCheck0123456789", "WANDB_API_KEY": "fakewandbkey" + "5" * 28}


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(SECRETS)
    env["WANDB_MODE"] = "disabled"  # the fake key must not send the jobs to a W&B server (no network here)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(
        [*SNAKEMAKE, "--cores", "2", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def planned_jobs(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(rule, wildcards) of each job a dry run plans (the "rule X:" blocks of its output)."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", result.stdout, flags=re.M)[1:]:
        rule = block.split(":", 1)[0]
        wildcards = re.search(r"^    wildcards: (.*)$", block, flags=re.M)
        if rule != "all":
            jobs.append((rule, wildcards[1] if wildcards else ""))
    return jobs


def results_snapshot(workdir: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in (workdir / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    """The whole pipeline of two runs, in a working directory whose path has spaces (every path reaches the
    shell quoted), with fake HF_TOKEN / WANDB_API_KEY values in the environment."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow") / "a work dir")
    experiment = small_experiment(
        ["a", "b"],
        steps=20,
        segment_steps=10,
        checkpoint={"interval_steps": 5},
        metrics={"log_every_steps": 1},
    )
    experiment["runs"]["a"]["text_samples"] = {"prompts": ["the owl", "once there was"], "max_new_tokens": 6}
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(experiment))
    result = snakemake(workdir, "all")
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_pipeline_outputs(finished_workflow):
    results = finished_workflow / "results"
    for run in ("a", "b"):
        for step in (0, 10, 20):
            assert (results / f"runs/{run}/checkpoints/step-{step}/meta.json").is_file()
            hf = results / f"runs/{run}/export/step-{step}/hf"
            assert (hf / "config.json").is_file() and (hf / "model.safetensors").is_file()
            assert (hf / "tokenizer.json").is_file()
            loss = json.loads((results / f"runs/{run}/eval/step-{step}/heldout.json").read_text())
            mc = json.loads((results / f"runs/{run}/eval/step-{step}/mc.json").read_text())
            assert (loss["run"], loss["step"], loss["kind"]) == (run, step, "loss")
            assert mc["num_examples"] == 16 and 0.0 <= mc["metrics"]["acc"] <= 1.0
            assert all((r["device"], r["dtype"]) == ("cpu", "float32") for r in (loss, mc))  # auto, no GPU
        # retention (keep_optimizer_last_k = 1): only the last segment keeps its optimizer state
        infos = {
            s: json.loads((results / f"runs/{run}/checkpoints/step-{s}/meta.json").read_text())
            for s in (10, 20)
        }
        assert "optimizer" not in infos[10]["contents"] and "optimizer_dropped" in infos[10]
        assert "optimizer" in infos[20]["contents"]
        freed = json.loads((results / f"runs/{run}/retention/step-10.json").read_text())
        assert freed["dropped"] and freed["bytes_after"] < 0.5 * freed["bytes_before"]
        first = json.loads((results / f"runs/{run}/eval/step-0/heldout.json").read_text())["metrics"]["loss"]
        last = json.loads((results / f"runs/{run}/eval/step-20/heldout.json").read_text())["metrics"]["loss"]
        assert last < 0.8 * first  # it learned something in 20 steps
    plots = ("loss", "perplexity", "learning_rate", "throughput", "memory", "eval_accuracy", "mixture")
    for name in ("summary.csv", "summary.html", "text_samples.html", *(f"{p}.png" for p in plots)):
        assert (results / "report" / name).stat().st_size > 0
    summary = (results / "report" / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2 * 3  # header + (2 runs × 3 evaluated steps)
    # Text samples of run a (only it asks for them) at every exported step, greedy and sampled, in the report.
    samples = json.loads((results / "runs/a/text_samples.json").read_text())
    assert [s["step"] for s in samples["steps"]] == [0, 10, 20]
    assert all([x["prompt"] for x in s["samples"]] == ["the owl", "once there was"] for s in samples["steps"])
    assert all(x["greedy"] and x["sampled"] for s in samples["steps"] for x in s["samples"])
    assert not (results / "runs/b/text_samples.json").exists()
    page = (results / "report" / "text_samples.html").read_text()
    assert page.count("once there was") == 3 and samples["steps"][-1]["samples"][0]["greedy"].strip() in page
    # Segment metrics are complete: every step of the run logged once, across both segments.
    steps = []
    for step in (10, 20):
        rows = (results / f"runs/a/checkpoints/step-{step}/metrics.jsonl").read_text().splitlines()
        steps += [json.loads(r)["step"] for r in rows]
    assert steps == list(range(1, 21))


def test_no_file_written_holds_a_secret(finished_workflow):
    """Logs, train.toml, manifests, metrics, eval JSONs, reports, exports and Snakemake's own log."""
    assert " " in str(finished_workflow)
    written = [p for p in finished_workflow.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.match(".snakemake/log/*.log") for p in written)
    assert any(p.name == "train.toml" for p in written) and any(p.name == "manifest.json" for p in written)
    for path in written:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name} leaked into {path}"


def test_nothing_to_do_after_a_finished_run(finished_workflow):
    result = snakemake(finished_workflow, "-n", "all")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_deleted_eval_reruns_only_that_job(finished_workflow):
    target = "results/runs/a/eval/step-10/mc.json"
    (finished_workflow / target).unlink()
    dry = snakemake(finished_workflow, "-n", target)
    assert planned_jobs(dry) == [("eval_multiple_choice", "run=a, step=10, task=mc")], dry.stdout
    result = snakemake(finished_workflow, target)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (finished_workflow / target).is_file()


def test_editing_a_runs_learning_rate_reruns_that_run_only(finished_workflow):
    config = yaml.safe_load((finished_workflow / "config/config.yaml").read_text())
    config["runs"]["b"]["overrides"]["optimizer"]["lr"] = 0.002
    (finished_workflow / "config/config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(finished_workflow, "-n", "all")
    jobs = planned_jobs(dry)
    rules = {rule for rule, _ in jobs}
    assert {"render_train_config", "init_checkpoint", "train_segment", "export_checkpoint"} <= rules
    assert "report" in rules
    for rule, wildcards in jobs:
        if rule != "report":
            assert "run=b" in wildcards, (rule, wildcards)
    assert not rules & {"prepare_dataset", "train_tokenizer", "tokenize"}
