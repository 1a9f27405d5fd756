"""A run's cluster layout (`runs.<run>.layout`): nodes, GPUs and processes per node, CPUs, memory and wall
time of its training jobs, and what its eval and export jobs need; turned into the Snakemake resources of
those jobs (the SLURM executor plugin's names), so that runs of different sizes share one experiment and the
profile keeps site settings only (partition, account, QoS).

The schema fills the defaults (one node, one process, no GPU, 2 CPUs, 8 GB, 60 minutes: what the rules gave
before layouts existed); `processes_per_node` defaults to `gpus_per_node` (one process per GPU), else 1; an
eval or export job's memory and wall time, when the layout leaves them out, are the profile's
default-resources (as before layouts existed), else 8 GB and 60 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Wall-time warning 10 minutes before the limit, to every process of the training step: the launcher turns
# SIGURG into SIGUSR1 for the trainer, which saves a rolling checkpoint and exits (docs/architecture.md).
WALL_TIME_WARNING = "--signal=URG@600"

DEFAULT_MEM_MB = 8000
DEFAULT_RUNTIME_MIN = 60


@dataclass(frozen=True)
class JobSize:
    """An eval or export job: one task on one node; memory and wall time not given: the profile's
    default-resources (else DEFAULT_MEM_MB / DEFAULT_RUNTIME_MIN)."""

    gpus: int = 0
    mem_mb: int | None = None
    runtime_min: int | None = None


@dataclass(frozen=True)
class RunLayout:
    nodes: int = 1
    gpus_per_node: int = 0
    processes_per_node: int = 1
    cpus_per_task: int = 2  # one task per node: the node's CPUs for the job
    mem_mb: int = DEFAULT_MEM_MB  # per node
    runtime_min: int = DEFAULT_RUNTIME_MIN
    eval: JobSize = JobSize()
    export: JobSize = JobSize()

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


def run_layout(spec: dict, run: str = "<run>") -> RunLayout:
    """The layout of a run's config.yaml entry (absent: one node, one process). Raises naming the key."""
    given = dict(spec.get("layout", {}))
    sizes = {job: JobSize(**given.pop(job, {})) for job in ("eval", "export")}
    gpus = given.get("gpus_per_node", 0)
    given.setdefault("processes_per_node", gpus or 1)
    layout = RunLayout(**given, **sizes)
    if layout.gpus_per_node and layout.processes_per_node > layout.gpus_per_node:
        raise ValueError(
            f"runs.{run}.layout.processes_per_node = {layout.processes_per_node} exceeds gpus_per_node = "
            f"{layout.gpus_per_node}; valid: 1 … {layout.gpus_per_node} (one process per GPU at most)"
        )
    return layout


def train_resources(layout: RunLayout) -> dict[str, Any]:
    """Resources of a train_segment job. Several nodes: one task per node, run by the batch script's own
    srun (`mpi`), GPUs as `gres` with `tasks_per_gpu=0` (else the plugin derives --ntasks-per-gpu)."""
    return {
        "nodes": layout.nodes,
        "tasks": layout.nodes,
        "mpi": "srun" if layout.nodes > 1 else "",
        "gres": f"gpu:{layout.gpus_per_node}" if layout.gpus_per_node else "",
        "tasks_per_gpu": 0,
        "train_procs_per_node": layout.processes_per_node,
        "mem_mb": layout.mem_mb,
        "runtime": layout.runtime_min,
        "slurm_extra": WALL_TIME_WARNING,
    }


def job_resources(size: JobSize, site_defaults: dict[str, int] | None = None) -> dict[str, Any]:
    """Resources of a one-task eval or export job; memory and wall time the layout leaves out come from
    ``site_defaults`` (the profile's default-resources: mem_mb, runtime), else lmrepro's defaults."""
    defaults = {"mem_mb": DEFAULT_MEM_MB, "runtime": DEFAULT_RUNTIME_MIN, **(site_defaults or {})}
    return {
        "gres": f"gpu:{size.gpus}" if size.gpus else "",
        "tasks_per_gpu": 0,
        "mem_mb": size.mem_mb if size.mem_mb is not None else defaults["mem_mb"],
        "runtime": size.runtime_min if size.runtime_min is not None else defaults["runtime"],
    }
