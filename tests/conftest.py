"""Shared fixtures: a tiny real dataset (synthetic corpus → trained BPE → token shards) built once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import copy_workflow

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Raw synthetic corpus, a 300-token BPE and train/heldout shards, made by the real code."""
    from lmrepro.data.encode import tokenize_to_shards
    from lmrepro.data.shards import INDEX_FILE
    from lmrepro.data.sources import prepare_dataset
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
        "train_index": root / "train" / INDEX_FILE,
        "heldout_index": root / "heldout" / INDEX_FILE,
    }


@pytest.fixture
def workflow_copy(tmp_path) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, schema, config, src) to run in isolation."""
    return copy_workflow(tmp_path)


@pytest.fixture
def restore_signal_handlers():
    """The trainer installs SIGTERM/SIGUSR1 handlers; when it runs in process, pytest's own are put back."""
    import signal

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
