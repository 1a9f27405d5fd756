"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
