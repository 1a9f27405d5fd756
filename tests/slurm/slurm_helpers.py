"""Plain helpers of the Slurm tests: a workflow copy, Snakemake under a hard limit, the site profile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from helpers import small_experiment

from lmrepro.run_layout import RunLayout, train_resources


def snakemake_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(extra)
    return env


def run_snakemake(
    workdir: Path, *args: str, timeout: int, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Snakemake under a hard limit: `timeout -k 5` (TERM, then KILL), and the process group killed if even
    that overruns, so that a status-command or rendezvous problem fails the test instead of hanging it."""
    cmd = ["timeout", "-k", "5", str(timeout), sys.executable, "-m", "snakemake", *args]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env or snakemake_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), "")


def experiment(steps: int) -> dict:
    """The reduced embedded default with one run and one segment of `steps` steps (rolling checkpoints
    every 100 steps, metrics every 5), exported and evaluated at step 0 and at the end, and the report."""
    return small_experiment(
        ["a"],
        steps=steps,
        segment_steps=steps,
        schedule={"warmup_steps": 10},
        checkpoint={"interval_steps": 100, "keep_latest_k": 2},
        metrics={"log_every_steps": 5, "tensorboard": False},
    )


def write_experiment(workdir: Path, steps: int) -> None:
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(experiment(steps)))


def repo_train_resources() -> dict:
    """The resources lmrepro.run_layout gives a train_segment of 2 nodes × 4 GPUs (what a site profile's
    set-resources starts from: it overrides the rule's per-run resources)."""
    layout = RunLayout(nodes=2, gpus_per_node=4, processes_per_node=4, mem_mb=200000, runtime_min=360)
    return train_resources(layout)


def write_site_profile(workdir: Path, name: str, train: dict, threads: int = 2, **settings) -> str:
    """A site profile for the test cluster, passed after profiles/slurm (later profiles replace top-level
    keys): partition `debug`, small memory, fast status checks, kept job logs; the train_segment block is
    profiles/slurm's with `train` applied. Returns its path for --profile."""
    profile = {
        "default-resources": {"slurm_partition": "debug", "runtime": 10, "mem_mb": 400},
        "slurm-init-seconds-before-status-checks": 1,
        "slurm-keep-successful-logs": True,
        "set-threads": {"train_segment": threads},
        "set-resources": {"train_segment": {**repo_train_resources(), **train}},
        **settings,
    }
    folder = workdir / "profiles" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return f"profiles/{name}"


def slurm_job_ids(workdir: Path, rule: str) -> list[str]:
    """Slurm job ids of a rule's jobs, from the executor's log files (.snakemake/slurm_logs)."""
    logs = (workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log")
    return sorted((p.stem for p in logs), key=int)


def sacct(*job_ids: str, fields: str = "JobID,NNodes,NTasks,State,ExitCode,Elapsed") -> list[dict]:
    """Accounting rows of jobs (ids like 12) or job steps (12.0: the first srun of job 12)."""
    allocations = ["-X"] if all("." not in job for job in job_ids) else []
    out = subprocess.run(
        ["sacct", *allocations, "-n", "-P", "-j", ",".join(job_ids), f"--format={fields}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    names = fields.split(",")
    return [dict(zip(names, line.split("|"), strict=True)) for line in out.splitlines() if line]
