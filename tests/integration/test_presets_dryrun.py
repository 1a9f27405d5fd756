"""Two seed presets dry-run through profiles/slurm: a run's layout is its jobs' submission.

frontier-torchtitan needs site files at parse time; they are faked minimally with their real formats: the
`params.json` Meta ships with Llama-3.1-8B's `original/` weights (its published content), an empty
`consolidated.00.pth` (parse time only checks that it exists), a one-line `tokenizer.model` in tiktoken's
format (parse time reads its first line to check the kind) and a one-row Arrow file for Stack-v2. The
dry-runs target one segment each, not `all` (500 segments), to stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import yaml
from helpers import LLAMA_31_8B_PARAMS, copy_workflow, planned_job, sbatch_line
from test_workflow import snakemake


def dry_run(workdir: Path, experiment: str, *targets: str):
    result = snakemake(
        workdir,
        "--profile",
        "profiles/slurm",
        "-n",
        "--cores",
        "1024",  # the job-step threads (a node's CPUs) are not capped by this machine's cores
        *targets,
        "--configfile",
        f"config/experiments/{experiment}.yaml",
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout


def without_lm_eval_suite(workdir: Path, experiment: str) -> None:
    """The preset's lm-eval tasks need their data in the offline datasets cache at parse time (a site's
    cache; the check itself: tests/unit/test_lm_eval_tasks.py): this test plans the training layout only."""
    path = workdir / "config" / "experiments" / f"{experiment}.yaml"
    config = yaml.safe_load(path.read_text())
    suite = {name for name, spec in config["evals"].items() if spec["kind"] == "lm_eval"}
    assert suite, "the preset lists its lm-eval suite"
    for run in config["runs"].values():
        run["evals"] = [name for name in run.get("evals", []) if name not in suite]
    config["evals"] = {name: spec for name, spec in config["evals"].items() if name not in suite}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def fake_frontier_site_files(workdir: Path) -> None:
    base = workdir / "models" / "Llama-3.1-8B" / "original"
    base.mkdir(parents=True)
    (base / "params.json").write_text(json.dumps(LLAMA_31_8B_PARAMS))
    (base / "consolidated.00.pth").write_bytes(b"")
    (base / "tokenizer.model").write_text("IQ== 0\n")  # tiktoken's format: a base64 token and its rank
    stack = workdir / "data" / "stack-v2-smol"
    stack.mkdir(parents=True)
    with pa.ipc.new_stream(stack / "data-00000-of-03000.arrow", pa.schema([("text", pa.string())])) as out:
        out.write_table(pa.table({"text": ["def f():\n    return 1\n"]}))


def test_frontier_trains_on_64_nodes_of_8_gpus_in_the_seeds_mesh(tmp_path: Path) -> None:
    workdir = copy_workflow(tmp_path / "frontier")
    fake_frontier_site_files(workdir)
    without_lm_eval_suite(workdir, "frontier-torchtitan")
    out = dry_run(workdir, "frontier-torchtitan", "results/runs/llama-3.1-8b-cpt/checkpoints/step-1000")
    resources, shell = planned_job(out, "train_segment")
    assert {k: resources[k] for k in ("nodes", "tasks", "mpi", "gres", "train_procs_per_node")} == {
        "nodes": "64",
        "tasks": "64",
        "mpi": "srun",
        "gres": "gpu:8",
        "train_procs_per_node": "8",
    }
    # 64 launchers (one per node) × 8 processes = the 512 ranks of DP 2 × 32 × TP 8 (checked at parse time)
    assert shell.startswith("srun --nodes=64 --ntasks=64 --ntasks-per-node=1 --cpus-per-task=56 "), shell
    assert " --nnodes 64 --nproc-per-node 8 --threads 56 " in shell, shell
    sbatch = sbatch_line(resources, threads=56)
    for option in (
        "-t 1440",
        "--mem 480000",
        "--nodes=64",
        "--ntasks=64",
        "--gres=gpu:8",
        "--signal=URG@600",
    ):
        assert f" {option}" in sbatch, (option, sbatch)
    # the base is converted by a one-node job with the default resources, not the training layout
    convert, _ = planned_job(out, "convert_base")
    assert " --nodes" not in sbatch_line(convert, threads=1)


def test_two_runs_of_different_node_counts_are_two_submissions(tmp_path: Path) -> None:
    """gpt-neuro-arch's 2B fine-tune (8 nodes) starts from primate-2B's last checkpoint: its step 0 waits
    for that run's 20 segments; primate-7B trains on 16 nodes."""
    workdir = copy_workflow(tmp_path / "neuro")
    out = dry_run(
        workdir,
        "gpt-neuro-arch",
        "results/runs/primate-2B-willett/checkpoints/step-160",
        "results/runs/primate-7B/checkpoints/step-1000",
    )
    small, _ = planned_job(out, "train_segment", "run=primate-2B-willett")
    large, _ = planned_job(out, "train_segment", "run=primate-7B")
    small_sbatch, large_sbatch = sbatch_line(small, threads=64), sbatch_line(large, threads=64)
    assert " --nodes=8 " in small_sbatch and " --ntasks=8 " in small_sbatch, small_sbatch
    assert " --nodes=16 " in large_sbatch and " --ntasks=16 " in large_sbatch, large_sbatch
    assert small_sbatch.replace("=8 ", "=16 ") == large_sbatch
    # the init chain: primate-2B-willett's step 0 is made from primate-2B's step-20000
    assert (
        "input: results/runs/primate-2B-willett/train.toml, results/runs/primate-2B/checkpoints/step-20000"
        in out
    )
    assert "--from-run results/runs/primate-2B/checkpoints/step-20000" in out
    assert out.count("wildcards: run=primate-2B, step=") == 20
