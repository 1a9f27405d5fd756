"""Plain helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
