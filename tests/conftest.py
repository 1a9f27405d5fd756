"""Shared fixtures: a tiny real dataset (synthetic corpus → trained BPE → token shards) built once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Raw synthetic corpus, a 300-token BPE and train/heldout shards, made by the real code."""
    from lmrepro.data.sources import prepare_dataset
    from lmrepro.data.tokenize import tokenize_to_shards
    from lmrepro.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("tiny_data")
    spec = {
        "source": "synthetic",
        "seed": 7,
        "num_train_documents": 1500,
        "num_heldout_documents": 100,
        "num_mc_examples": 24,
    }
    prepare_dataset(spec, root / "raw")
    train_bpe([root / "raw" / "train.jsonl"], 300, root / "tokenizer")
    for split in ("train", "heldout"):
        tokenize_to_shards([root / "raw" / f"{split}.jsonl"], root / "tokenizer", root / split)
    return {
        "root": root,
        "raw": root / "raw",
        "tokenizer": root / "tokenizer",
        "train_index": root / "train" / "index.json",
        "heldout_index": root / "heldout" / "index.json",
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
        "data": {"train_index": str(train_index), "seq_len": 32},
        "optimizer": {"lr": 0.003},
        "schedule": {"warmup_steps": 2},
        "training": {"steps": 12, "global_batch_tokens": 256},
        "checkpoint": {"interval_steps": 4, "keep_latest_k": 2},
        "metrics": {"log_every_steps": 1, "tensorboard": False},
    }
    job = from_dict(JobConfig, merge(base, sections))
    path.write_text(dump_toml(job))
    return path


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, schema, config) to run in isolation."""
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name)
        else:
            shutil.copy(src, tmp_path / name)
    return tmp_path
