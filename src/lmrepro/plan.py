"""The plan of an experiment before any job: per run its batch arithmetic, schedule and layout.

`python -m lmrepro.plan --configfile config/experiments/<name>.yaml` prints one tab-separated row per run:
global batch in tokens, micro-batch and gradient accumulation per GPU, total tokens, steps, warmup / decay /
floor, the learning rate at steps 1, 2, warmup, warmup + 1 and the last, nodes × GPUs per node and the
parallel degrees (DP replicate × shard × TP). It needs no data, tokenizer or base on disk: it renders each
run's trainer config (preset < overrides < the workflow's values) and plans its layout on the run's world
size (`runs.<run>.layout`), the same checks `check_config` and the trainer make.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lmrepro.config import render_job_config
from lmrepro.logs import run_main
from lmrepro.train.schedule import lr_at
from lmrepro.workflow import check_run_layout, run_fixed_values, with_validation

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


@dataclass(frozen=True)
class RunPlan:
    run: str
    global_batch_tokens: int
    seq_len: int
    micro_batch_sequences: int  # per GPU (data-parallel rank)
    grad_accum_steps: int
    steps: int
    total_tokens: int
    warmup_steps: int
    decay: str
    formula: str
    floor_lr: float
    lr_by_step: dict[int, float]  # steps 1, 2, warmup, warmup + 1, last
    nodes: int
    gpus_per_node: int
    processes_per_node: int
    dp_replicate: int
    dp_shard: int
    tp: int


def lr_probe_steps(warmup: int, steps: int) -> list[int]:
    """Steps 1, 2, warmup, warmup + 1 and the last, those that exist, in order, once each."""
    wanted = [1, 2, warmup, warmup + 1, steps]
    return sorted({s for s in wanted if 1 <= s <= steps})


def run_plan(run: str, spec: dict, evals: dict | None = None, root: str | Path = ".") -> RunPlan:
    """One run's plan from its config.yaml entry (schema defaults filled). Raises naming the bad key."""
    resolved = with_validation(spec, evals or {}, run)
    job = render_job_config(
        Path(root) / spec["preset"], spec.get("overrides", {}), run_fixed_values(run, resolved, root=root)
    )
    layout, planned = check_run_layout(run, spec, job)
    steps, schedule, peak = job.training.steps, job.schedule, job.optimizer.lr
    return RunPlan(
        run=run,
        global_batch_tokens=job.training.global_batch_tokens,
        seq_len=job.data.seq_len,
        micro_batch_sequences=planned.micro_batch_sequences,
        grad_accum_steps=planned.grad_accum_steps,
        steps=steps,
        total_tokens=steps * job.training.global_batch_tokens,
        warmup_steps=schedule.warmup_steps,
        decay=schedule.decay,
        formula=schedule.formula,
        floor_lr=peak * schedule.min_lr_ratio,
        lr_by_step={s: lr_at(s, peak, steps, schedule) for s in lr_probe_steps(schedule.warmup_steps, steps)},
        nodes=layout.nodes,
        gpus_per_node=layout.gpus_per_node,
        processes_per_node=layout.processes_per_node,
        dp_replicate=planned.dims.dp_replicate,
        dp_shard=planned.dims.dp_shard,
        tp=planned.dims.tp,
    )


def load_experiment(paths: list[str | Path]) -> dict[str, Any]:
    """The experiment files merged as Snakemake merges several --configfile, validated against the
    workflow's schema with its defaults filled in."""
    from snakemake.utils import update_config, validate

    config: dict[str, Any] = {}
    for path in paths:
        update_config(config, yaml.safe_load(Path(path).read_text()))
    try:
        validate(config, str(SCHEMA), set_default=True)
    except Exception as e:  # snakemake's WorkflowError; its ValidationError line names the key
        lines = [line for line in str(e).splitlines() if line.startswith("ValidationError: ")] or [str(e)]
        message = lines[0].removeprefix("ValidationError: ")
        raise ValueError(f"{', '.join(map(str, paths))}: {message}") from None
    return config


def experiment_plan(config: dict[str, Any], root: str | Path = ".") -> list[RunPlan]:
    return [run_plan(run, spec, config.get("evals", {}), root) for run, spec in config["runs"].items()]


COLUMNS = (
    "run",
    "global_batch_tokens",
    "seq_len",
    "micro_batch_per_gpu",
    "grad_accum",
    "steps",
    "total_tokens",
    "warmup",
    "decay",
    "floor_lr",
    "lr_at_steps",
    "nodes_x_gpus",
    "dp_replicate_x_shard_x_tp",
)


def plan_rows(plans: list[RunPlan]) -> list[list[str]]:
    rows = [list(COLUMNS)]
    for p in plans:
        lrs = " ".join(f"{s}:{lr:.6g}" for s, lr in p.lr_by_step.items())
        rows.append(
            [
                p.run,
                str(p.global_batch_tokens),
                str(p.seq_len),
                str(p.micro_batch_sequences),
                str(p.grad_accum_steps),
                str(p.steps),
                str(p.total_tokens),
                str(p.warmup_steps),
                f"{p.decay} ({p.formula})",
                f"{p.floor_lr:.6g}",
                lrs,
                f"{p.nodes}x{p.gpus_per_node} ({p.processes_per_node} processes/node)",
                f"{p.dp_replicate}x{p.dp_shard}x{p.tp}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", nargs="+", required=True, help="experiment file(s), as for snakemake")
    args = parser.parse_args(argv)
    for row in plan_rows(experiment_plan(load_experiment(args.configfile))):
        sys.stdout.write("\t".join(row) + "\n")


if __name__ == "__main__":
    run_main(main)
