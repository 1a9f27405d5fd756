"""profiles/slurm on a real Slurm cluster (two simulated nodes on this host, tests/slurm/cluster.sh).

- The pipeline end to end through the SLURM executor, its training segment a 2-node torchrun job (one gloo
  process per node) whose first attempt gets a 1-minute wall time: the warning signal makes the trainer save
  a rolling checkpoint and stop, the retry resumes, and losses and final weights equal an uninterrupted
  `torchrun --standalone --nproc-per-node 2` run of the same train.toml.
- A node lost mid-segment (every training process of n2 killed): the job fails, Snakemake resubmits it and
  the new job resumes from the rolling checkpoint.
- The sbatch line of a 64-node × 4-GPU experiment, from the resources Snakemake computes.
- Bad input (more nodes than the partition has, a missing partition, inconsistent train resources, a warning
  lead as long as the wall time, an unreachable rendezvous) fails fast with a clear message and leaves the
  checkpoints alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import REPO, copy_workflow, planned_job, sbatch_line
from slurm_helpers import (
    experiment,
    repo_train_resources,
    run_snakemake,
    sacct,
    slurm_job_ids,
    snakemake_env,
    write_experiment,
    write_site_profile,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

STEPS = 700  # one segment: 35-55 s of training on 2 cores, more than fits before the first attempt's warning
SEGMENT = f"results/runs/a/checkpoints/step-{STEPS}"
TIMEOUTS = {"LMREPRO_PG_TIMEOUT_S": "120", "LMREPRO_RDZV_TIMEOUT_S": "60"}
# First attempt: a 1-minute limit and a warning 10 s before it. slurmctld checks limits every 30 s and sends a
# warning up to 30 s early, so it comes 20-50 s after the start: after the training step exists (a warning
# sent before that reaches no one) and before 700 steps are done. Retries: 10 minutes, no warning.
# Everything else is profiles/slurm's train_segment block.
WALL_TIME_LIMITED = {
    "train_procs_per_node": 1,
    "gres": "gpu:1",  # fake GPUs: exercises --gres with tasks_per_gpu=0 (torch is the CPU build: gloo)
    "mem_mb": 1000,
    "runtime": "1 if attempt == 1 else 10",
    "slurm_extra": "--signal=URG@10",
}


@pytest.fixture(scope="module")
def pipeline(slurm_cluster, tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm") / "pipeline")
    write_experiment(workdir, STEPS)
    site = write_site_profile(workdir, "site", WALL_TIME_LIMITED)
    started = time.monotonic()
    args = ["--profile", "profiles/slurm", "--profile", site, "all"]
    result = run_snakemake(workdir, *args, timeout=900, env=snakemake_env(**TIMEOUTS))
    elapsed = time.monotonic() - started
    print(f"pipeline through Slurm: {elapsed:.0f} s")
    assert result.returncode == 0, result.stdout[-6000:] + train_log(workdir) + slurm_cluster.logs()
    return SimpleNamespace(workdir=workdir, output=result.stdout, elapsed=elapsed)


def train_log(workdir: Path) -> str:
    path = workdir / f"results/logs/train_segment/a/step-{STEPS}.log"
    return path.read_text() if path.is_file() else ""


def test_pipeline_runs_through_slurm_with_a_two_node_training_job(pipeline):
    results = pipeline.workdir / "results"
    for step in (0, STEPS):
        assert (results / f"runs/a/checkpoints/step-{step}/meta.json").is_file()
        assert (results / f"runs/a/export/step-{step}/hf/model.safetensors").is_file()
        loss = json.loads((results / f"runs/a/eval/step-{step}/heldout.json").read_text())
        mc = json.loads((results / f"runs/a/eval/step-{step}/mc.json").read_text())
        assert loss["step"] == mc["step"] == step and mc["num_examples"] == 16
    assert (results / "report/summary.csv").stat().st_size > 0
    # Every job went through sbatch; the training jobs had two nodes, one task (launcher) on each.
    rules = ("prepare_dataset", "train_tokenizer", "tokenize", "init_checkpoint", "export_checkpoint")
    for rule in (*rules, "eval_loss", "eval_multiple_choice", "report"):
        assert slurm_job_ids(pipeline.workdir, rule), rule
    train_jobs = slurm_job_ids(pipeline.workdir, "train_segment")
    steps = sacct(*(f"{job}.0" for job in train_jobs))  # the srun of each: one launcher task per node
    assert {(step["NNodes"], step["NTasks"]) for step in steps} == {("2", "2")}, steps
    assert sacct(train_jobs[-1])[0]["State"] == "COMPLETED"
    log = train_log(pipeline.workdir)
    for node in ("n1", "n2"):
        assert f"lmrepro launch [{node}]: 2 nodes × 1 processes = world 2" in log
    assert re.search(r"c10d rendezvous at 127\.0\.0\.1:\d+ \(head node n1", log), log[-3000:]


def test_wall_time_warning_checkpoints_and_the_retry_resumes(pipeline):
    first, *retries = sacct(*slurm_job_ids(pipeline.workdir, "train_segment"))
    # The first attempt ended by itself (FAILED, not TIMEOUT) within its 1-minute limit; one retry finished.
    assert first["State"] == "FAILED" and first["Elapsed"] < "00:01:00", first
    assert [job["State"] for job in retries] == ["COMPLETED"], retries
    # The launchers' journal survives the retry (Snakemake deletes a job's log before rerunning it).
    journal = (pipeline.workdir / "results/runs/a/state/launch.log").read_text()
    attempt = [line for line in journal.splitlines() if f" job {first['JobID']} " in line]
    for node in ("n1", "n2"):
        assert any(f"[{node}]: wall-time warning (SIGURG)" in line for line in attempt), journal
        assert any(f"[{node}]: SIGUSR1 to training processes" in line for line in attempt), journal
    # The retry resumed from the rolling checkpoint the signal made: not one of the every-100-steps ones.
    resumed = re.search(
        r"resuming from rolling checkpoint \S+step-(\d+) \(step \d+\)", train_log(pipeline.workdir)
    )
    assert resumed, train_log(pipeline.workdir)[-4000:]
    step = int(resumed.group(1))
    assert 0 < step < STEPS and step % 100, step  # checkpoint.interval_steps = 100
    meta = json.loads((pipeline.workdir / SEGMENT / "meta.json").read_text())
    assert meta["step"] == STEPS and meta["parallel"]["world_size"] == 2


@pytest.fixture(scope="module")
def reference(pipeline) -> Path:
    """The same train.toml trained without interruption on one node with two processes (the launcher's
    local path, torchrun --standalone), in a run folder of its own."""
    workdir = pipeline.workdir
    config = workdir / "reference" / "train.toml"
    config.parent.mkdir()
    toml = (workdir / "results/runs/a/train.toml").read_text()
    config.write_text(toml.replace('run_dir = "results/runs/a"', 'run_dir = "reference"'))
    assert 'run_dir = "reference"' in config.read_text()
    cmd = ["timeout", "-k", "5", "600", sys.executable, "workflow/scripts/launch_train.py"]
    cmd += ["--nproc-per-node", "2", "--threads", "2", "--", "workflow/scripts/train.py"]
    cmd += ["--config", str(config), "--resume-from", "results/runs/a/checkpoints/step-0"]
    cmd += ["--save-to", f"reference/step-{STEPS}", "--until-step", str(STEPS)]
    started = time.monotonic()
    env = snakemake_env(**TIMEOUTS)
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=660)
    print(f"reference run (1 node × 2 processes): {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stderr[-5000:]
    assert "1 node × 2 processes = world 2; torchrun --standalone" in result.stderr
    return workdir / "reference" / f"step-{STEPS}"


def losses(checkpoint: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from lmrepro.checkpoint.dcp import load_model

    model, _ = load_model(checkpoint)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def test_losses_and_weights_equal_a_one_node_two_process_run(pipeline, reference):
    slurm, local = losses(pipeline.workdir / SEGMENT), losses(reference)
    assert sorted(slurm) == sorted(local) == list(range(5, STEPS + 1, 5))
    worst = max(abs(slurm[s] - local[s]) / abs(local[s]) for s in local)
    print(f"max relative loss difference over {len(local)} logged steps: {worst:.2e}")
    assert worst <= 1e-6, (slurm, local)
    ours, theirs = weights(pipeline.workdir / SEGMENT), weights(reference)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-7, msg=name)


# ---- 64 nodes × 4 GPUs: the resources Snakemake computes, the sbatch line the plugin makes of them ----


def test_sbatch_resources_of_a_64_node_4_gpu_experiment(tmp_path):
    """The run's layout (runs.<run>.layout) is its train jobs' resources; the profiles add site settings."""
    workdir = copy_workflow(tmp_path / "big")
    config = experiment(20)
    config["runs"]["a"]["layout"] = {
        "nodes": 64,
        "gpus_per_node": 4,
        "cpus_per_task": 32,
        "mem_mb": 200000,
        "runtime_min": 360,
    }
    overrides = config["runs"]["a"].setdefault("overrides", {})
    overrides.setdefault("training", {})["global_batch_tokens"] = 256 * 32  # one sequence per rank
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    site = workdir / "profiles" / "site64"
    site.mkdir()
    profile = {
        "default-resources": {
            "slurm_partition": "gpu",
            "slurm_account": "abc123",
            "runtime": 60,
            "mem_mb": 8000,
        },
    }
    (site / "config.yaml").write_text(yaml.safe_dump(profile))
    result = run_snakemake(
        workdir,
        "--profile",
        "profiles/slurm",
        "--profile",
        "profiles/site64",
        "-n",
        "--cores",
        "1024",
        "all",
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    resources, shell = planned_job(result.stdout, "train_segment")
    expected = {"nodes": "64", "tasks": "64", "mpi": "srun", "gres": "gpu:4", "tasks_per_gpu": "0"}
    assert {k: resources.get(k) for k in expected} == expected, resources
    assert resources["train_procs_per_node"] == "4" and resources["slurm_extra"] == "--signal=URG@600"
    assert shell.startswith(
        "srun --nodes=64 --ntasks=64 --ntasks-per-node=1 --cpus-per-task=32 --mem=0 --kill-on-bad-exit=1 "
        "--gres=gpu:4 python workflow/scripts/launch_train.py --nnodes 64 --nproc-per-node 4 --threads 32 "
        "--journal results/runs/a/state/launch.log -- workflow/scripts/train.py "
    ), shell
    sbatch = sbatch_line(resources, threads=32)
    for option in (
        "-A abc123",
        "-p gpu",
        "-t 360",
        "--mem 200000",
        "--nodes=64",
        "--ntasks=64",
        "--cpus-per-task=32",
        "--signal=URG@600",
        "--gres=gpu:4",
    ):
        assert f" {option}" in sbatch, (option, sbatch)
    assert "--ntasks-per-gpu" not in sbatch and "--gpus" not in sbatch, sbatch
    # The other rules stay single-node, single-task jobs with the default resources.
    resources, _ = planned_job(result.stdout, "prepare_dataset")
    sbatch = sbatch_line(resources, threads=1)
    assert " --ntasks=1 " in sbatch and "--nodes" not in sbatch and " -t 60" in sbatch, sbatch


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # 4 nodes × 4 processes = 16 ranks: the experiment's 16 sequences a step still divide (checked first)
        ({"nodes": 4}, "nodes=4 but tasks=2; one task per node needs tasks=4"),
        ({"tasks_per_gpu": 1}, "with gres set tasks_per_gpu=0"),
        ({"mpi": ""}, "nodes=2 needs mpi='srun' and tasks=2"),
    ],
    ids=["tasks-not-nodes", "ntasks-per-gpu", "multi-node-without-mpi"],
)
def test_inconsistent_train_resources_stop_while_planning(tmp_path, change, message):
    workdir = copy_workflow(tmp_path / "plan")
    write_experiment(workdir, 20)
    site = workdir / "profiles" / "site"
    site.mkdir()
    (site / "config.yaml").write_text(
        yaml.safe_dump({"set-resources": {"train_segment": {**repo_train_resources(), **change}}})
    )
    result = run_snakemake(
        workdir, "--profile", "profiles/slurm", "--profile", "profiles/site", "-n", "all", timeout=120
    )
    assert result.returncode != 0 and message in result.stdout, result.stdout[-3000:]


def test_launcher_derives_world_size_and_rendezvous_from_the_slurm_step(monkeypatch):
    """What each node's launcher prints and runs in a 64-node × 4-process step (dry run, no cluster)."""
    step = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NODEID": "17",
        "SLURM_STEP_NUM_NODES": "64",
        "SLURM_STEP_NUM_TASKS": "64",
        "LMREPRO_RDZV_HOST": "node001.cluster",
    }
    cmd = [sys.executable, str(REPO / "workflow/scripts/launch_train.py"), "--nnodes", "64"]
    cmd += [
        "--nproc-per-node",
        "4",
        "--threads",
        "32",
        "--socket-ifname",
        "ib0",
        "--dry-run",
        "--",
        "train.py",
    ]
    result = subprocess.run(cmd, env={**os.environ, **step}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "64 nodes × 4 processes = world 256; node index 17" in result.stderr
    assert "c10d rendezvous at node001.cluster:24242" in result.stderr
    assert "OMP_NUM_THREADS=8; NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0" in result.stderr
    assert (
        "torchrun --nnodes 64 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint node001.cluster:24242 "
        "--rdzv-id 4242"
    ) in result.stderr
    # Two tasks on one node (a wrong srun line) is refused before torchrun starts.
    wrong = {**step, "SLURM_STEP_NUM_TASKS": "128"}
    result = subprocess.run(cmd, env={**os.environ, **wrong}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "start exactly one task per node" in result.stderr, result.stderr


# ---- bad input: a clear error, no hang, no lost checkpoint ----


@pytest.fixture(scope="module")
def prepared(slurm_cluster, tmp_path_factory):
    """A run whose step-0 exists (made locally); its first segment is what the bad-input tests submit."""
    workdir = copy_workflow(tmp_path_factory.mktemp("slurm") / "bad")
    write_experiment(workdir, 20)
    result = run_snakemake(workdir, "--cores", "2", "results/runs/a/checkpoints/step-0", timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    return workdir


def submit_segment(workdir: Path, train: dict, timeout: int = 180, **env) -> tuple[str, int, float]:
    """Snakemake through profiles/slurm + a site profile for the first segment: (output, rc, seconds)."""
    site = write_site_profile(workdir, "bad", train, **{"preemptible-retries": 0})
    started = time.monotonic()
    target = "results/runs/a/checkpoints/step-20"
    args = ["--profile", "profiles/slurm", "--profile", site, "--nolock", target]
    result = run_snakemake(workdir, *args, timeout=timeout, env=snakemake_env(**env))
    return result.stdout, result.returncode, time.monotonic() - started


def assert_checkpoints_intact(workdir: Path, step0: dict) -> None:
    run = workdir / "results/runs/a"
    assert json.loads((run / "checkpoints/step-0/meta.json").read_text()) == step0
    assert not (run / "checkpoints/step-20").exists()
    assert not list((run / "state").glob("checkpoints/step-*"))


SMALL = {"train_procs_per_node": 1, "gres": "gpu:1", "mem_mb": 1000, "runtime": 15}  # warning @600 s


@pytest.fixture
def step0(prepared):
    return json.loads((prepared / "results/runs/a/checkpoints/step-0/meta.json").read_text())


def test_more_nodes_than_the_partition_has_stop_before_submission(prepared, step0):
    """Slurm itself would accept this job and keep it pending (PartitionNodeLimit) for ever."""
    # 4 ranks: the experiment's 16 sequences per step divide (the layout is checked first, at parse time)
    output, rc, elapsed = submit_segment(prepared, {**SMALL, "nodes": 4, "tasks": 4})
    assert rc != 0 and elapsed < 60, (elapsed, output[-3000:])
    assert "nodes=4, but partition debug: 2 nodes at most" in output, output[-3000:]
    assert not slurm_job_ids(prepared, "train_segment")  # nothing was submitted
    assert_checkpoints_intact(prepared, step0)


def test_a_missing_partition_stops_before_submission(prepared, step0):
    output, rc, elapsed = submit_segment(prepared, {**SMALL, "slurm_partition": "nosuch"})
    assert rc != 0 and elapsed < 60, (elapsed, output[-3000:])
    assert "slurm_partition='nosuch': Partition nosuch not found" in output, output[-3000:]
    assert_checkpoints_intact(prepared, step0)


def test_a_warning_lead_as_long_as_the_wall_time_stops_before_submission(prepared, step0):
    output, rc, elapsed = submit_segment(prepared, {**SMALL, "runtime": 10})  # profiles/slurm: URG@600
    assert rc != 0 and elapsed < 60, (elapsed, output[-3000:])
    assert (
        "the wall-time warning --signal=URG@600 comes 600 s before the end of a runtime=10 min job" in output
    )
    assert_checkpoints_intact(prepared, step0)


def test_an_unreachable_rendezvous_fails_within_its_timeout(prepared, step0):
    """The rule's launch (one launcher per node of a 2-node step) with a rendezvous host nobody answers at:
    both nodes give up after LMREPRO_RDZV_TIMEOUT_S with torch's rendezvous error. (srun directly: through
    Snakemake the same failure also waits out the executor's status polling, about a minute.)"""
    cmd = ["timeout", "-k", "5", "120", "srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1", "--mem=500"]
    cmd += [sys.executable, "workflow/scripts/launch_train.py", "--nnodes", "2", "--nproc-per-node", "1"]
    cmd += ["--threads", "1", "--", "workflow/scripts/train.py", "--config", "results/runs/a/train.toml"]
    cmd += [
        "--resume-from",
        "results/runs/a/checkpoints/step-0",
        "--save-to",
        "results/runs/a/checkpoints/step-20",
    ]
    cmd += ["--until-step", "20"]
    env = snakemake_env(LMREPRO_RDZV_HOST="192.0.2.1", LMREPRO_RDZV_TIMEOUT_S="1")
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=prepared, env=env, capture_output=True, text=True, timeout=150)
    elapsed = time.monotonic() - started
    print(f"unreachable rendezvous: failed after {elapsed:.0f} s")
    output = result.stdout + result.stderr
    assert result.returncode not in (0, 124, 137) and elapsed < 60, (elapsed, output[-3000:])
    for node in ("n1", "n2"):
        assert f"lmrepro launch [{node}]: 2 nodes × 1 processes = world 2" in output
        assert f"lmrepro launch [{node}]: torchrun exited" in output, output[-3000:]
    assert "c10d rendezvous at 192.0.2.1:" in output and "timeout 1 s" in output, output[-3000:]
    assert "RendezvousConnectionError" in output, output[-3000:]
    assert_checkpoints_intact(prepared, step0)


# ---- a node lost mid-segment: the job fails, Snakemake resubmits it, the retry resumes ----

LOST_STEPS = 100  # about 7 s of 2-node training here; a rolling checkpoint every 20 steps


def processes_of_node(node: str, job_id: str) -> list[int]:
    """The launcher, torchrun and training process that Slurm started for `job_id` on `node`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            environ = dict(
                item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item
            )
            cmdline = (proc / "cmdline").read_text().replace("\0", " ")
        except OSError:
            continue
        same_task = environ.get("SLURMD_NODENAME") == node and environ.get("SLURM_JOB_ID") == job_id
        if same_task and "workflow/scripts/" in cmdline:
            found.append(int(proc.name))
    return found


def between_checkpoints(state: Path) -> bool:
    """Whether the last step logged in state/metrics.jsonl lies after a rolling checkpoint (every 20)."""
    metrics = state / "metrics.jsonl"
    lines = (
        [line for line in metrics.read_text().splitlines() if line.endswith("}")] if metrics.is_file() else []
    )
    return bool(lines) and json.loads(lines[-1])["step"] % 20 != 0 and json.loads(lines[-1])["step"] > 20


def test_a_node_lost_mid_segment_fails_the_job_and_the_resubmission_resumes(prepared):
    """Every training process of node n2 SIGKILLed once the segment has a rolling checkpoint: srun ends the
    step (--kill-on-bad-exit), the job fails, Snakemake's retry resubmits it, and the new job resumes from
    the rolling checkpoint; the steps both attempts trained have bitwise equal losses."""
    workdir = prepared
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    lost = experiment(LOST_STEPS)["runs"]["a"]
    lost["overrides"]["checkpoint"] = {"interval_steps": 20, "keep_latest_k": 2}
    config["runs"]["lost"] = lost  # same dataset and tokenizer as run a: only its own jobs run
    (workdir / "config/config.yaml").write_text(yaml.safe_dump(config))
    step0 = run_snakemake(workdir, "--cores", "2", "results/runs/lost/checkpoints/step-0", timeout=300)
    assert step0.returncode == 0, step0.stdout[-4000:]
    site = write_site_profile(workdir, "lost", SMALL, **{"preemptible-retries": 1})
    target = f"results/runs/lost/checkpoints/step-{LOST_STEPS}"
    cmd = ["timeout", "-k", "5", "400", sys.executable, "-m", "snakemake", "--profile", "profiles/slurm"]
    cmd += ["--profile", site, "--nolock", target]
    started = time.monotonic()
    with open(workdir / "lost-snakemake.log", "w+") as out:
        proc = subprocess.Popen(
            cmd, cwd=workdir, env=snakemake_env(**TIMEOUTS), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            # Kill between two rolling checkpoints, once a step after the newest one is logged, so that
            # the retry trains some logged steps again.
            state = workdir / "results/runs/lost/state"
            while not (list(state.glob("checkpoints/step-*/meta.json")) and between_checkpoints(state)):
                assert proc.poll() is None, out.seek(0) or out.read()[-4000:]
                assert time.monotonic() - started < 300, "no rolling checkpoint within 300 s"
                time.sleep(0.05)
            jobs = [p for p in slurm_job_ids(workdir, "train_segment") if processes_of_node("n2", p)]
            assert len(jobs) == 1, jobs
            victims = processes_of_node("n2", jobs[0])
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # the node is gone: no checkpoint, no message
            print(f"killed {victims} on n2 (job {jobs[0]}) after {time.monotonic() - started:.0f} s")
            proc.wait(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        output = out.read()
    print(f"node loss and resubmission: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, output[-5000:]
    first, *retries = sacct(*[j for j in slurm_job_ids(workdir, "train_segment") if int(j) >= int(jobs[0])])
    assert first["JobID"] == jobs[0] and first["State"] == "FAILED", first
    assert [job["State"] for job in retries] == ["COMPLETED"], retries
    log = (workdir / f"results/logs/train_segment/lost/step-{LOST_STEPS}.log").read_text()
    resumed = re.search(r"resuming from rolling checkpoint \S+/step-(\d+) \(step \d+\)", log)
    assert resumed and int(resumed.group(1)) >= 20, log[-4000:]
    meta = json.loads((workdir / target / "meta.json").read_text())
    assert meta["step"] == LOST_STEPS and meta["parallel"]["world_size"] == 2
    assert losses(workdir / target).keys() == set(range(5, LOST_STEPS + 1, 5))
    # Steps that the killed attempt logged after its checkpoint were trained again: bitwise the same.
    seen: dict[int, list[float]] = {}
    for line in (workdir / "results/runs/lost/state/metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        seen.setdefault(row["step"], []).append(row["loss"])
    again = {step: values for step, values in seen.items() if len(values) > 1}
    assert again and all(len(set(values)) == 1 for values in again.values()), again
