"""DCP checkpoints: model + optimizer + train state, written atomically with a meta.json.

A checkpoint folder is complete iff it holds meta.json: DCP writes into a hidden temp folder, rank 0
adds meta.json and renames it into place, so a job killed mid-save never leaves a folder that a later
step would take as complete. Loading is strict (no silent partial loads): a missing key is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from lmrepro.provenance import provenance

META = "meta.json"

# Single-process save/load (seed checkpoints, export, evaluation) is intended, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def read_meta(path: str | Path) -> dict:
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete lmrepro checkpoint (no {META})")
    return json.loads(meta_path.read_text())


def is_complete(path: str | Path) -> bool:
    return (Path(path) / META).is_file() and (Path(path) / ".metadata").is_file()


def save(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_state: dict,
    meta: dict,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Save collectively (every rank calls); returns the meta written (with a fresh checkpoint_id).

    extra_files (name → text) are written into the folder before it appears, e.g. the segment's metrics.
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"checkpoint {path} already exists; refusing to overwrite it")
    tmp = path.parent / f".{path.name}.partial"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    if optimizer is None:
        state = {"model": get_model_state_dict(model), "train": train_state}
    else:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optimizer": osd, "train": train_state}
    dcp.save(state, checkpoint_id=str(tmp))
    meta = {**meta, "checkpoint_id": uuid.uuid4().hex, "contents": sorted(state), "provenance": provenance()}
    if dist.is_initialized():
        box = [meta]
        dist.broadcast_object_list(box, src=0)
        meta = box[0]
    if _rank() == 0:
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, path)
    _barrier()
    return meta


def load(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_state: dict,
) -> dict:
    """Load in place (collectively). Model-only checkpoints (step-0 seeds) leave the optimizer fresh.

    `train_state` is a template dict whose values are replaced by the checkpoint's. Returns meta.
    """
    meta = read_meta(path)
    with_optimizer = optimizer is not None and "optimizer" in meta["contents"]
    if with_optimizer:
        msd, osd = get_state_dict(model, optimizer)
        state = {"model": msd, "optimizer": osd, "train": train_state}
    else:
        state = {"model": get_model_state_dict(model), "train": train_state}
    dcp.load(state, checkpoint_id=str(path))
    if with_optimizer:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    else:
        set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    train_state.update(state["train"])
    return meta


def rolling_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete rolling checkpoints `step-N` in folder, oldest first."""
    folder = Path(folder)
    found = []
    for p in folder.glob("step-*") if folder.is_dir() else []:
        suffix = p.name.removeprefix("step-")
        if suffix.isdigit() and is_complete(p):
            found.append((int(suffix), p))
    return sorted(found)


def discard(paths: list[Path], folder: str | Path) -> None:
    """Delete rolling checkpoints and the temp folders of killed saves in folder (collective; rank 0
    deletes once every rank has finished reading the folder)."""
    _barrier()
    if _rank() == 0:
        for path in [*paths, *Path(folder).glob(".step-*.partial")]:
            shutil.rmtree(path, ignore_errors=True)
    _barrier()


def purge_old(folder: str | Path, keep_latest_k: int) -> None:
    """Delete all but the newest k complete rolling checkpoints (rank 0 only)."""
    if _rank() != 0:
        return
    for _, path in rolling_checkpoints(folder)[:-keep_latest_k]:
        shutil.rmtree(path, ignore_errors=True)
