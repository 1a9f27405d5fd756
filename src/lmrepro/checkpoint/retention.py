"""Retention of segment checkpoints: a checkpoint keeps its optimizer state only while a later segment may
resume from it (``runs.<run>.keep_optimizer_last_k``); afterwards it is model-only (model + train state).

DCP stores every key of a checkpoint in its ``.distcp`` files, at byte ranges that its ``.metadata`` lists.
:func:`drop_optimizer_state` copies the ranges of every key but ``optimizer.*`` into new files, writes a
``.metadata`` that lists only those, and swaps the new folder in: memory stays at one read buffer, and
nothing is re-serialised, so the model and train state are byte for byte what training saved. The other
files (``metrics.jsonl``, ``init.json``, Snakemake's ``.snakemake_timestamp``) are copied with their
times, and the folder keeps its modification time, so Snakemake sees the same, complete output and reruns
nothing downstream. ``meta.json`` keeps its ``checkpoint_id`` (the same training state; rolling
checkpoints' lineage refers to it), drops ``optimizer`` from ``contents`` and records
``optimizer_dropped``; :func:`lmrepro.checkpoint.dcp.load` refuses to resume a segment from it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import shutil
import time
from pathlib import Path

from lmrepro.checkpoint import checksums
from lmrepro.checkpoint.dcp import CHECKPOINT_INFO, read_checkpoint_info
from lmrepro.io import write_json

log = logging.getLogger(__name__)

DCP_METADATA = ".metadata"
OPTIMIZER_PREFIX = "optimizer."  # DCP's flattened keys of the {"model", "optimizer", "train"} state


def folder_bytes(path: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def drop_optimizer_state(path: str | Path) -> dict:
    """Make the DCP checkpoint at ``path`` model-only (atomically); returns what was done, in bytes.

    A checkpoint without optimizer state (step 0, or done before) is left as it is.
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    before = folder_bytes(path)
    record = {"checkpoint": str(path), "step": info.get("step"), "bytes_before": before}
    if "optimizer" not in info.get("contents", []):
        return {**record, "bytes_after": before, "dropped": False}
    tmp = path.parent / f".{path.name}.model-only.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    checksums.verify(path)  # a damaged checkpoint is reported, not copied into a model-only one
    metadata = pickle.loads((path / DCP_METADATA).read_bytes())
    _copy_kept_items(metadata, path, tmp)
    skipped = (DCP_METADATA, CHECKPOINT_INFO, checksums.MANIFEST)
    workflow_files = [item for item in path.iterdir() if item.name.startswith(".snakemake")]
    for item in path.iterdir():  # metrics.jsonl, init.json, ...
        if (
            item.is_file()
            and item.suffix != ".distcp"
            and item.name not in skipped
            and item not in workflow_files
        ):
            shutil.copy2(item, tmp / item.name)
    dropped = {"by": "keep_optimizer_last_k", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    new_info = {**info, "contents": [c for c in info["contents"] if c != "optimizer"]}
    write_json(tmp / CHECKPOINT_INFO, {**new_info, "optimizer_dropped": dropped})
    checksums.write_manifest(
        tmp, {}
    )  # the new files' sizes and digests (Snakemake's own files are not covered)
    for item in workflow_files:  # .snakemake_timestamp
        shutil.copy2(item, tmp / item.name)
    _keep_times(path, tmp)
    old = path.parent / f".{path.name}.with-optimizer.old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old)
    after = folder_bytes(path)
    log.info("%s: optimizer state dropped, %.1f MB -> %.1f MB", path, before / 1e6, after / 1e6)
    return {**record, "bytes_after": after, "dropped": True}


def _copy_kept_items(metadata, src: Path, dst: Path) -> None:
    """Copy the byte ranges of every non-optimizer key into files of the same names in ``dst`` and point
    ``metadata`` (filtered to those keys) at their new offsets; write it as ``dst/.metadata``."""
    kept = {fqn for fqn in metadata.state_dict_metadata if not fqn.startswith(OPTIMIZER_PREFIX)}
    entries = sorted(
        ((index, info) for index, info in metadata.storage_data.items() if index.fqn in kept),
        key=lambda e: (e[1].relative_path, e[1].offset),
    )
    storage, outputs = {}, {}
    try:
        for index, item in entries:
            out = outputs.get(item.relative_path)
            if out is None:
                out = outputs[item.relative_path] = open(dst / item.relative_path, "wb")  # noqa: SIM115
            with open(src / item.relative_path, "rb") as f:
                f.seek(item.offset)
                data = f.read(item.length)
            if len(data) != item.length:
                raise ValueError(f"{src / item.relative_path}: {item.length} bytes expected at {item.offset}")
            storage[index] = dataclasses.replace(item, offset=out.tell())
            out.write(data)
    finally:
        for out in outputs.values():
            out.close()
    metadata.state_dict_metadata = {k: v for k, v in metadata.state_dict_metadata.items() if k in kept}
    metadata.storage_data = storage
    if isinstance(metadata.planner_data, dict):
        metadata.planner_data = {k: v for k, v in metadata.planner_data.items() if k in kept}
    with open(dst / DCP_METADATA, "wb") as f:
        pickle.dump(metadata, f)


def _keep_times(src: Path, dst: Path) -> None:
    """The new files get the newest time of the old folder, the folder its own: no output looks newer."""
    newest = max(f.stat().st_mtime for f in src.iterdir())
    for f in dst.iterdir():
        if f.name != ".snakemake_timestamp":  # copied with its own time
            os.utime(f, (newest, newest))
    stat = src.stat()
    os.utime(dst, (stat.st_atime, stat.st_mtime))
