"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]

# The seeds' full-size presets (config/experiments/<name>.yaml): their bases, tokenizers or data are site
# files (or their DAG has thousands of jobs), so tests/unit/test_presets.py checks their plans against the
# seeds and tests/integration/test_presets_dryrun.py dry-runs two of them; every other experiment (the tiny
# twins) is dry-run whole by test_experiments.py.
FULL_SIZE_PRESETS = {
    "gpt-neuro-arch",
    "gpt-neuro-8b-131k",
    "llm-pytorch",
    "llemma",
    "training-custom-llama",
    "torchtitan-mlm",
    "frontier-torchtitan",
}


def copy_workflow(workdir: Path) -> Path:
    """The workflow as a user has it (Snakefile, rules, scripts, config, profiles, envs, src) in `workdir`."""
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "profiles", "envs", "src"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, workdir / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy(src, workdir / name)
    return workdir


def small_experiment(runs: list[str], steps: int, segment_steps: int, **trainer: dict) -> dict:
    """A reduced embedded default: a small synthetic dataset and `debug` Llama, held-out loss and lm-eval
    multiple choice at every segment end; `trainer` adds trainer-override sections."""
    run = {
        "preset": "config/train/debug.toml",
        "dataset": "synthetic",
        "tokenizer": "bpe",
        "steps": steps,
        "segment_steps": segment_steps,
        "evals": ["heldout", "mc"],
        "overrides": {
            "model": {"overrides": {"dim": 64, "n_layers": 2, "ffn_dim": 128}},
            "data": {"seq_len": 32},
            "training": {"global_batch_tokens": 512},
            "optimizer": {"lr": 0.003},
            **trainer,
        },
    }
    return {
        "datasets": {
            "synthetic": {
                "source": "synthetic",
                "seed": 3,
                "num_train_documents": 800,
                "num_heldout_documents": 60,
                "num_mc_examples": 16,
            }
        },
        "tokenizers": {"bpe": {"kind": "bpe", "dataset": "synthetic", "vocab_size": 300}},
        "evals": {
            "heldout": {"kind": "loss", "dataset": "synthetic", "split": "heldout", "max_tokens": 2048},
            "mc": {"kind": "multiple_choice", "dataset": "synthetic", "file": "mc.jsonl"},
        },
        "runs": {name: copy.deepcopy(run) for name in runs},
    }


def write_train_toml(path: Path, run_dir: Path, train_index: Path, **sections) -> Path:
    """A trainer config for a model small enough for multi-process CPU tests."""
    from lmrepro.config import JobConfig, dump_toml, from_dict, merge

    base = {
        "run": "test",
        "run_dir": str(run_dir),
        "model": {
            "flavor": "debug",
            "vocab_size": 300,
            "overrides": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128},
        },
        "data": {"sources": [{"name": "train", "weight": 1.0, "index": str(train_index)}], "seq_len": 32},
        "optimizer": {"lr": 0.003},
        "schedule": {"warmup_steps": 2},
        "training": {"steps": 12, "global_batch_tokens": 256},
        "checkpoint": {"interval_steps": 4, "keep_latest_k": 2},
        "metrics": {"log_every_steps": 1, "tensorboard": False},
    }
    job = from_dict(JobConfig, merge(base, sections))
    path.write_text(dump_toml(job))
    return path


# Tiny shapes of the llm-pytorch seed's models (GPT-Neo-125M: alternating global/local attention, tied
# embeddings), of GPT-NeoX and of transformers' Llama, for configs written by transformers itself.
TINY_HF_CONFIGS = {
    "gpt_neo": dict(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        attention_types=[[["global", "local"], 1]],
        window_size=8,
        max_position_embeddings=64,
        intermediate_size=64,
    ),
    "gpt_neox": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
    "llama": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    ),
}


def write_tiny_hf_config(folder: Path, model_type: str, **overrides) -> Path:
    """A config folder as a user gets it from transformers (`save_pretrained`)."""
    import transformers

    config = transformers.AutoConfig.for_model(model_type, **{**TINY_HF_CONFIGS[model_type], **overrides})
    config.save_pretrained(folder)
    return folder


# ---- a dry run's planned jobs and the sbatch line the SLURM executor plugin makes of them ----


def planned_job(output: str, rule: str, wildcards: str = "") -> tuple[dict[str, str], str]:
    """(resources, shell command) of the first `rule` job a dry run (-n, printshellcmds) plans, of those
    whose wildcards line contains `wildcards`."""
    for block in re.finditer(rf"^rule {rule}:\n(.*?)^Shell command: (.*?)$", output, flags=re.M | re.S):
        if wildcards in block.group(1):
            line = re.search(r"^\s+resources: (.*)$", block.group(1), flags=re.M).group(1)
            return dict(item.split("=", 1) for item in line.split(", ")), block.group(2)
    raise AssertionError(f"no {rule} job with {wildcards!r} planned:\n{output[-4000:]}")


class PlannedResources(dict):
    """A dry run's resources with attribute access, as the plugin reads `job.resources`."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def sbatch_line(resources: dict[str, str], threads: int) -> str:
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    typed = PlannedResources({k: int(v) if v.isdigit() else v for k, v in resources.items()})
    job = SimpleNamespace(resources=typed, threads=threads)
    params = {
        "run_uuid": "RUN",
        "slurm_logfile": "LOG",
        "comment_str": "rule_train_segment",
        "account": f" -A {typed['slurm_account']}" if "slurm_account" in typed else "",
        "partition": f" -p {typed['slurm_partition']}" if "slurm_partition" in typed else "",
        "workdir": "WORKDIR",
    }
    return get_submit_command(job, params) + set_gres_string(job)


# meta-llama/Llama-3.1-8B original/params.json, as released
LLAMA_31_8B_PARAMS = {
    "dim": 4096,
    "ffn_dim_multiplier": 1.3,
    "multiple_of": 1024,
    "n_heads": 32,
    "n_kv_heads": 8,
    "n_layers": 32,
    "norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "use_scaled_rope": True,
    "vocab_size": 128256,
}
