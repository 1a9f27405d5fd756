"""Slurm for the workflow and the launcher: the training launch prefix, its checks before submission, and
the `scontrol` output the two read.

The parsers are pure functions of scontrol's text (tests feed them captured output); `scontrol()` and
`partition_limit()` are the thin wrappers that run the command.

- `launch_prefix` (the `train_segment` rule, via common.smk's `train_launcher`): `launch_train.py` alone
  (local runs, single-node jobs), or behind `srun` once per node when the job has an `mpi` resource.
- Checks while the DAG is built, before any `sbatch`: tasks = nodes, `tasks_per_gpu=0` with GPUs, a
  wall-time warning lead shorter than the wall time, and (SLURM executor) a node count the partition allows.
- `node_addr` / `first_hostname` (lmrepro.launch): the rendezvous host of a multi-node job.
"""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
from collections.abc import Mapping
from typing import Any

SCONTROL_TIMEOUT_S = 60
WARNING_OPTION = re.compile(r"--signal[= ](?:[RB]:)?\w+@(\d+)")


class SlurmError(RuntimeError):
    """scontrol failed or printed something other than what was asked for."""


# ------------------------------------------------------------------------------------ scontrol


def _run_scontrol(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["scontrol", *args], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S, check=False
    )


def scontrol(*args: str) -> str:
    """stdout of `scontrol args…`; SlurmError naming the command if it cannot run or fails."""
    command = shlex.join(["scontrol", *args])
    try:
        result = _run_scontrol(list(args))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SlurmError(f"{command} failed: {exc}") from exc
    if result.returncode:
        raise SlurmError(f"{command} failed: {result.stderr.strip()}")
    return result.stdout


def oneliner_records(text: str) -> list[dict[str, str]]:
    """`scontrol --oneliner show …` output: one record per line, its `Key=Value` fields as a dict."""
    return [
        dict(item.split("=", 1) for item in line.split() if "=" in item)
        for line in text.splitlines()
        if line.strip()
    ]


def parse_partition_limit(text: str, name: str) -> tuple[str, int]:
    """(partition, most nodes a job may use there: min(TotalNodes, MaxNodes)) from the output of
    `scontrol --oneliner show partition [name]`; `name` "" is the default partition."""
    for fields in oneliner_records(text):
        if fields.get("PartitionName") == name or (not name and fields.get("Default") == "YES"):
            total, most = int(fields["TotalNodes"]), fields["MaxNodes"]
            return fields["PartitionName"], (total if most == "UNLIMITED" else min(total, int(most)))
    raise ValueError(f"slurm_partition={name!r}: no such partition (and no default one)")


@functools.cache
def partition_limit(name: str) -> tuple[str, int] | None:
    """parse_partition_limit of this cluster's scontrol; None where no Slurm client is installed."""
    try:
        show = _run_scontrol(["--oneliner", "show", "partition", *([name] if name else [])])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if show.returncode:
        raise ValueError(f"slurm_partition={name!r}: {show.stderr.strip() or show.stdout.strip()}")
    return parse_partition_limit(show.stdout, name)


def parse_node_addr(text: str, node: str) -> str:
    """NodeAddr from the output of `scontrol show node --oneliner <node>` (on most clusters the hostname)."""
    for field in text.split():
        if field.startswith("NodeAddr="):
            return field.removeprefix("NodeAddr=")
    raise SlurmError(f"scontrol show node {node}: no NodeAddr")


def parse_first_hostname(text: str, nodelist: str) -> str:
    """The first node of the output of `scontrol show hostnames <nodelist>` (one hostname a line)."""
    names = text.split()
    if not names:
        raise SlurmError(f"scontrol show hostnames {nodelist}: no hostname")
    return names[0]


def node_addr(node: str) -> str:
    return parse_node_addr(scontrol("show", "node", "--oneliner", node), node)


def first_hostname(nodelist: str) -> str:
    return parse_first_hostname(scontrol("show", "hostnames", nodelist), nodelist)


# ------------------------------------------------------------------------------- launch prefix


def launch_prefix(
    *, threads: int, resources: Mapping[str, Any], journal: str, executor: str | None = None
) -> str:
    """The training launch prefix of a train_segment job (ends with `--`, the training script follows).

    Without an `mpi` resource (local runs, single-node jobs) the launcher runs `torchrun --standalone`
    with train_procs_per_node processes. With resources nodes=N, tasks=N, mpi="srun" (profiles/slurm),
    srun starts it once per node and each copy runs torchrun with c10d rendezvous on the first node.
    `executor` is the Snakemake executor plugin's name (None: local).
    """
    nodes = resources.get("nodes", 1)
    launcher = (
        f"python workflow/scripts/launch_train.py --nnodes {nodes} "
        f"--nproc-per-node {resources.get('train_procs_per_node')} --threads {threads} "
        f"--journal {shlex.quote(journal)}"
    )
    if resources.get("socket_ifname"):
        launcher += f" --socket-ifname {shlex.quote(resources.get('socket_ifname'))}"
    if resources.get("train_max_restarts"):
        launcher += f" --max-restarts {max_restarts(resources.get('train_max_restarts'))}"
    check_warning_lead(resources)
    if resources.get("mpi"):
        if executor == "slurm" and not resources.get("slurm_cluster"):
            check_partition_size(nodes, str(resources.get("slurm_partition", "")))
        launcher = f"{train_srun(nodes, threads, resources)} {launcher}"
    elif nodes != 1:
        raise ValueError(
            f"train_segment: nodes={nodes} needs mpi='srun' and tasks={nodes} (one task per node; "
            "without mpi the SLURM executor runs the job on one node): see profiles/slurm/config.yaml"
        )
    return f"{launcher} --"


def max_restarts(value: Any) -> int:
    """train_max_restarts: torchrun's in-job restarts of the training processes, an integer >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"train_segment: train_max_restarts={value!r}; give an integer >= 0 (torchrun --max-restarts)"
        )
    return value


def train_srun(nodes: int, threads: int, resources: Mapping[str, Any]) -> str:
    """srun for a multi-node train job: one task per node, all of the job's CPUs, memory and GPUs."""
    tasks = resources.get("tasks")
    if tasks != nodes:
        raise ValueError(
            f"train_segment: nodes={nodes} but tasks={tasks}; one task per node needs tasks={nodes} "
            f"(e.g. --set-resources train_segment:nodes={nodes} train_segment:tasks={nodes} ...)"
        )
    gres = resources.get("gres", "")
    if gres and resources.get("tasks_per_gpu") != 0:
        raise ValueError(
            "train_segment: with gres set tasks_per_gpu=0, or the SLURM executor turns "
            "tasks into --ntasks-per-gpu"
        )
    srun = (
        f"{resources.get('mpi')} --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 "
        f"--cpus-per-task={threads} --mem=0 --kill-on-bad-exit=1"
    )
    return f"{srun} --gres={gres}" if gres else srun


def check_warning_lead(resources: Mapping[str, Any]) -> None:
    """The wall-time warning (slurm_extra --signal=SIG@seconds) must leave the job time to train: with a
    lead as long as the wall time, every attempt would stop after its first step."""
    warning = WARNING_OPTION.search(str(resources.get("slurm_extra", "")))
    runtime = resources.get("runtime")
    if warning and isinstance(runtime, int) and int(warning.group(1)) >= 60 * runtime:
        raise ValueError(
            f"train_segment: the wall-time warning {warning.group(0)} comes {warning.group(1)} s before "
            f"the end of a runtime={runtime} min job, i.e. at its start; raise runtime or lower the lead"
        )


def check_partition_size(nodes: int, partitions: str, limit=None) -> None:
    """Before submission (SLURM executor): more nodes than the partition has or allows would leave the job
    pending forever (PartitionNodeLimit) on clusters without EnforcePartLimits. Stop with the numbers.
    `partitions` is slurm_partition (comma-separated; "" the default one); `limit` looks one up."""
    limits = [(limit or partition_limit)(name.strip()) for name in partitions.split(",")]
    if limits[0] is not None and nodes > max(most for _, most in limits):
        sizes = ", ".join(f"{name}: {most}" for name, most in limits)
        raise ValueError(
            f"train_segment: nodes={nodes}, but partition {sizes} nodes at most; Slurm would keep the "
            "job pending. Ask for fewer nodes or another partition (resources nodes, tasks, slurm_partition)."
        )
