"""The seed presets' plans (lmrepro.plan, no data or bases on disk) against the seeds' documented numbers.

Each row cites the seed file its numbers come from (seed-systems.md in ../shared/reference names them). The
expected learning rates are computed here by each seed's own scheduler formula, independently of
lmrepro.train.schedule: torchtitan's LambdaLR (linear_warmup_linear_decay), build-nanogpt's get_lr, GPT-NeoX's
AnnealingLR (cosine, decay_lr_to) and Hugging Face's get_linear_schedule_with_warmup, each evaluated at the
0-based step x = s - 1 of lmrepro's 1-based step s.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml
from helpers import FULL_SIZE_PRESETS

from lmrepro.plan import experiment_plan, load_experiment, plan_rows, run_plan

REPO = Path(__file__).resolve().parents[2]
EXPERIMENTS = REPO / "config" / "experiments"


def torchtitan_lr(x: int, peak: float, warmup: int, steps: int) -> float:
    """torchtitan lr_scheduler.linear_warmup_linear_decay (all eminorhan forks), LambdaLR at step x."""
    if x < warmup:
        return peak * (x + 1) / (warmup + 1)
    return peak * (1 - (x - warmup) / (steps - warmup))


def nanogpt_lr(x: int, peak: float, warmup: int, steps: int, min_ratio: float) -> float:
    """build-nanogpt's get_lr(it) (training-custom-llama train.py)."""
    if x < warmup:
        return peak * (x + 1) / warmup
    ratio = (x - warmup) / (steps - warmup)
    return peak * min_ratio + 0.5 * (1 + math.cos(math.pi * ratio)) * (peak - peak * min_ratio)


def neox_lr(x: int, peak: float, warmup: int, steps: int, decay_lr_to: float) -> float:
    """GPT-NeoX AnnealingLR, cosine with the llemma branch's decay_lr_to floor."""
    if warmup > 0 and x <= warmup:
        return peak * x / warmup
    floor = peak * decay_lr_to
    return floor + (peak - floor) / 2 * (math.cos(math.pi * (x - warmup) / (steps - warmup)) + 1)


def hf_linear_lr(x: int, peak: float, warmup: int, steps: int) -> float:
    """transformers get_linear_schedule_with_warmup (llm-pytorch, run_clm_no_trainer)."""
    if x < warmup:
        return peak * x / max(1, warmup)
    return peak * max(0.0, (steps - x) / max(1, steps - warmup))


def tt(peak):
    return lambda s, warmup, steps: torchtitan_lr(s - 1, peak, warmup, steps)


def nanogpt(peak, min_ratio):
    return lambda s, warmup, steps: nanogpt_lr(s - 1, peak, warmup, steps, min_ratio)


def neox(peak, decay_lr_to):
    return lambda s, warmup, steps: neox_lr(s - 1, peak, warmup, steps, decay_lr_to)


def hf_linear(peak):
    return lambda s, warmup, steps: hf_linear_lr(s - 1, peak, warmup, steps)


# "experiment:run": (tokens per step, seq, micro-batch per GPU, accumulation, steps, warmup, the seed's lr
# formula and peak, nodes, GPUs per node, (DP replicate, DP shard, TP)), cited from the seed's files.
SEEDS = {
    # gpt-neuro-arch train_configs/full_pile/*.toml + its SLURM scripts (seed-systems.md §1.6)
    "gpt-neuro-arch:primate-250M": (4194304, 8192, 16, 1, 20000, 1000, tt(3e-4), 8, 4, (1, 32, 1)),
    "gpt-neuro-arch:primate-870M": (4194304, 8192, 16, 1, 20000, 1000, tt(3e-4), 8, 4, (1, 32, 1)),
    "gpt-neuro-arch:primate-2B": (4194304, 8192, 16, 1, 20000, 1000, tt(3e-4), 8, 4, (1, 32, 1)),
    "gpt-neuro-arch:primate-7B": (8388608, 8192, 16, 1, 20000, 1000, tt(3e-4), 16, 4, (1, 64, 1)),
    "gpt-neuro-arch:rodent-250M": (4194304, 8192, 16, 1, 30000, 1000, tt(3e-4), 8, 4, (1, 32, 1)),
    "gpt-neuro-arch:rodent-870M": (4194304, 8192, 16, 1, 30000, 1000, tt(3e-4), 8, 4, (1, 32, 1)),
    "gpt-neuro-arch:rodent-2B": (4194304, 8192, 16, 1, 30000, 1000, tt(3e-4), 8, 4, (1, 32, 1)),
    "gpt-neuro-arch:rodent-7B": (8388608, 8192, 16, 1, 30000, 1000, tt(3e-4), 16, 4, (1, 64, 1)),
    "gpt-neuro-arch:rodent-2B-longer": (4194304, 8192, 16, 1, 60000, 2000, tt(3e-4), 8, 4, (1, 32, 1)),
    # gpt-neuro-arch train_configs/finetune_individual_*
    "gpt-neuro-arch:primate-2B-willett": (4194304, 8192, 16, 1, 1600, 160, tt(3e-5), 8, 4, (1, 32, 1)),
    # gpt-neuro train_configs/primate_8b_131k.toml (Frontier: 64 nodes × 8 GCDs)
    "gpt-neuro-8b-131k:primate-8b-131k": (33554432, 131072, 4, 1, 50000, 1000, tt(3e-4), 64, 8, (2, 32, 8)),
    # llm-pytorch docs/guides/gpt-pretraining.md (16 Polaris nodes × 4 A100, batch 1 × GAS 8, block 1024)
    "llm-pytorch:gpt-neo-125m-wikitext2": (524288, 1024, 1, 8, 10000, 0, hf_linear(5e-5), 16, 4, (1, 64, 1)),
    "llm-pytorch:gpt-neo-125m-wikitext2-kfac": (
        524288,
        1024,
        1,
        8,
        10000,
        0,
        hf_linear(5e-5),
        16,
        4,
        (1, 64, 1),
    ),
    # gpt-neox llemma branch configs/llemma_7b.yml, configs/llemma_34b.yml, 34b_launch_script.sh (32 × 8)
    "llemma:llemma-7b": (4194304, 4096, 4, 2, 48000, 500, neox(1e-4, 0.033), 32, 8, (1, 128, 2)),
    "llemma:llemma-34b": (4194304, 4096, 2, 16, 12000, 500, neox(5e-5, 0.033), 32, 8, (1, 32, 8)),
    # training-custom-llama train.py (March 2025): 524,288 tokens per step, one node (8 GPUs chosen here)
    "training-custom-llama:custom-llama": (
        524288,
        512,
        16,
        8,
        19073,
        715,
        nanogpt(1.8e-3, 0.1),
        1,
        8,
        (1, 8, 1),
    ),
    "training-custom-llama:custom-llama-better": (
        *(524288, 1024, 4, 16, 19073, 715, nanogpt(1.8e-3, 0.1), 1, 8, (1, 8, 1)),
    ),
    # torchtitan-mlm train_configs/llama3_1b_n64.toml, train_1B_n64.sh
    "torchtitan-mlm:llama3-1b-mlm": (12582912, 16384, 12, 1, 500000, 2000, tt(3e-4), 64, 8, (2, 32, 8)),
    # frontier-torchtitan train_configs/llama3_8b_n64.toml, train_8B_n64.sh
    "frontier-torchtitan:llama-3.1-8b-cpt": (11010048, 8192, 21, 1, 500000, 500, tt(3e-5), 64, 8, (2, 32, 8)),
}


@pytest.fixture(scope="module")
def plans() -> dict[str, object]:
    return {
        f"{name}:{p.run}": p
        for name in sorted(FULL_SIZE_PRESETS)
        for p in experiment_plan(load_experiment([EXPERIMENTS / f"{name}.yaml"]), root=REPO)
    }


def test_every_full_size_preset_and_run_is_in_the_table(plans) -> None:
    assert set(plans) == set(SEEDS)
    assert {path.stem for path in EXPERIMENTS.glob("*.yaml") if "tiny" not in path.stem} == FULL_SIZE_PRESETS


@pytest.mark.parametrize("key", sorted(SEEDS))
def test_plan_equals_the_seed(plans, key) -> None:
    tokens, seq, micro, accum, steps, warmup, seed_schedule, nodes, gpus, mesh = SEEDS[key]
    p = plans[key]
    assert (p.global_batch_tokens, p.seq_len, p.micro_batch_sequences, p.grad_accum_steps) == (
        tokens,
        seq,
        micro,
        accum,
    )
    assert tokens == micro * accum * seq * p.dp_replicate * p.dp_shard  # nanoGPT's batch arithmetic
    assert (p.steps, p.total_tokens, p.warmup_steps) == (steps, steps * tokens, warmup)
    assert (p.nodes, p.gpus_per_node, p.processes_per_node) == (nodes, gpus, gpus)
    assert (p.dp_replicate, p.dp_shard, p.tp) == mesh and nodes * gpus == math.prod(mesh)
    probes = sorted({s for s in (1, 2, warmup, warmup + 1, steps) if s >= 1})
    assert sorted(p.lr_by_step) == probes
    for step in probes:
        seed_lr = seed_schedule(step, warmup, steps)
        assert p.lr_by_step[step] == pytest.approx(seed_lr, rel=1e-9, abs=1e-15), step


def test_plan_rows_print_batch_schedule_and_mesh(plans) -> None:
    header, row = plan_rows([plans["frontier-torchtitan:llama-3.1-8b-cpt"]])
    fields = dict(zip(header, row, strict=True))
    assert fields["global_batch_tokens"] == "11010048" and fields["micro_batch_per_gpu"] == "21"
    assert fields["nodes_x_gpus"].startswith("64x8") and fields["dp_replicate_x_shard_x_tp"] == "2x32x8"
    assert fields["lr_at_steps"].startswith("1:5.98802e-08 2:1.1976e-07 500:2.99401e-05 501:3e-05 500000:")


def test_a_layout_that_does_not_divide_the_batch_is_refused() -> None:
    config = load_experiment([EXPERIMENTS / "gpt-neuro-arch.yaml"])
    spec = copy.deepcopy(config["runs"]["primate-250M"])
    spec["layout"]["nodes"] = 6  # 24 ranks: 512 sequences of 8192 do not split
    with pytest.raises(ValueError, match=r"runs\.primate-250M\.layout \(6 nodes × 4 processes = 24 ranks\).*"
                       r"global_batch_tokens = 4194304 is not divisible by .* 8192 × 24"):  # fmt: skip
        run_plan("primate-250M", spec, config["evals"], REPO)


def test_a_layout_that_does_not_fit_the_mesh_is_refused() -> None:
    config = load_experiment([EXPERIMENTS / "frontier-torchtitan.yaml"])
    spec = copy.deepcopy(config["runs"]["llama-3.1-8b-cpt"])
    spec["layout"]["nodes"] = 32
    with pytest.raises(
        ValueError, match=r"runs\.llama-3\.1-8b-cpt\.layout .*replicate 2 × shard 32 × tp 8 = 512"
    ):
        run_plan("llama-3.1-8b-cpt", spec, config["evals"], REPO)


def test_more_processes_than_gpus_is_refused() -> None:
    config = load_experiment([EXPERIMENTS / "llm-pytorch.yaml"])
    spec = copy.deepcopy(config["runs"]["gpt-neo-125m-wikitext2"])
    spec["layout"]["processes_per_node"] = 8
    with pytest.raises(ValueError, match=r"layout\.processes_per_node = 8 exceeds gpus_per_node = 4"):
        run_plan("gpt-neo-125m-wikitext2", spec, config["evals"], REPO)


def test_the_seeds_lm_eval_suites_are_lm_eval_tasks_of_the_presets() -> None:
    """frontier-torchtitan's eval_configs/*.yaml tasks and the Llemma paper's suite, as evals of kind
    lm_eval that their runs name (lm-eval's own task definitions; checked offline at parse time)."""
    suites = {
        "frontier-torchtitan": (
            ["llama-3.1-8b-cpt"],
            {"mmlu", "mmlu_pro", "ai2_arc", "gsm8k", "agieval_en", "drop", "bbh", "winogrande", "hellaswag"},
        ),
        "llemma": (["llemma-7b", "llemma-34b"], {"minerva_math", "gsm8k", "mmlu_stem"}),
    }
    for experiment, (runs, tasks) in suites.items():
        config = yaml.safe_load((EXPERIMENTS / f"{experiment}.yaml").read_text())
        named = {n: e["task"] for n, e in config["evals"].items() if e["kind"] == "lm_eval"}
        assert set(named.values()) == tasks, experiment
        for run in runs:
            assert set(named) <= set(config["runs"][run]["evals"]), run
    llemma = yaml.safe_load((EXPERIMENTS / "llemma.yaml").read_text())["evals"]
    assert llemma["minerva_math"]["num_fewshot"] == 4  # MATH 4-shot, as the paper reports it
