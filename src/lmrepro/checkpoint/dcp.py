"""DCP checkpoints: model + optimizer + train state, written atomically with their info file (meta.json).

A checkpoint folder is complete iff it holds meta.json (``CHECKPOINT_INFO``: step, tokens seen, lineage,
model args; not to be confused with Meta's Llama format, ``checkpoint/convert.py``): DCP writes into a
hidden temp folder, rank 0 adds meta.json and renames it into place, so a job killed mid-save never leaves
a folder that a later step would take as complete. Just before the rename, ``checksums.json`` records
the size and sha256 of every file (checkpoint/checksums.py); every load verifies it first. Loading is
strict (no silent partial loads): a missing key is an error. The readers below take only model keys from
a checkpoint (export, evaluation, a run's step-0 from a converted base): names, shapes and dtypes from the
DCP metadata, tensors one by one.
"""

from __future__ import annotations

import os
import shutil
import uuid
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from lmrepro.checkpoint import checksums
from lmrepro.checkpoint.hf import model_shapes
from lmrepro.io import full_disk_explained, partial_path, write_json
from lmrepro.model.build import ModelSpec, args_from_info, build_model, has_model_info, model_state_shapes
from lmrepro.model.llama import ModelArgs
from lmrepro.provenance import provenance

CHECKPOINT_INFO = "meta.json"  # our checkpoint's info file; its presence marks the folder complete
MODEL_PREFIX = "model."  # DCP checkpoints hold {"model": ..., "optimizer": ..., "train": ...}

# Single-process save/load (seed checkpoints, export, evaluation) is intended, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def read_checkpoint_info(path: str | Path) -> dict:
    """The checkpoint's meta.json (not verified against checksums.json: see :func:`checksums.verify`)."""
    return checksums.read_info(Path(path))


def is_complete(path: str | Path) -> bool:
    """Whether the save finished (meta.json is added just before the rename); intact or not is for
    :func:`checksums.verify` to say, so that a damaged checkpoint is reported rather than skipped."""
    return (Path(path) / CHECKPOINT_INFO).is_file()


def save(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_state: dict,
    info: dict,
    extra_files: dict[str, str] | None = None,
) -> dict:
    """Save collectively (every rank calls); returns the info written (with a fresh checkpoint_id).

    extra_files (name → text) are written into the folder before it appears, e.g. the segment's metrics.
    A full disk is a DiskFullError naming ``path``, its partial folder deleted; older checkpoints stay.
    """
    path = Path(path)
    tmp = _begin(path)
    state = _state(model, optimizer, train_state)
    with full_disk_explained(path, tmp, state_bytes(state)):
        dcp.save(state, checkpoint_id=str(tmp))
        hashed = checksums.gather(checksums.hash_share(tmp, checksums.checkpoint_files(tmp)))
        return _complete(tmp, path, sorted(state), info, extra_files, hashed)


def state_bytes(state: object) -> int:
    """Bytes of the tensors this rank holds in a (nested) state dict: what it writes of a checkpoint."""
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    return 0


class PendingSave:
    """A checkpoint that DCP ``async_save`` is writing in a background thread from CPU copies of the state;
    once the writes are done, each rank hashes its share of the files in another background thread.
    :meth:`finish` (every rank) waits for both, then makes the folder complete like :func:`save`, and closes
    the save's stager."""

    def __init__(
        self, path: Path, tmp: Path, contents: list[str], info: dict, future, group, nbytes: int, stager
    ) -> None:
        self.path, self.tmp, self.contents, self.info, self.future = path, tmp, contents, info, future
        self.nbytes, self.stager = nbytes, stager
        self._hasher = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-checksums")
        self._hashed: Future = self._hasher.submit(self._hash_when_written, group)

    def _hash_when_written(self, group) -> dict:
        self.future.result()  # re-raised by finish() when the write failed
        return checksums.hash_share(self.tmp, checksums.checkpoint_files(self.tmp), group)

    def finish(self) -> dict:
        with full_disk_explained(self.path, self.tmp, self.nbytes):
            try:
                self.future.result()  # re-raises a failed write
                share = self._hashed.result()
            finally:
                self._hasher.shutdown()
                self.stager.close()
            return _complete(self.tmp, self.path, self.contents, self.info, None, checksums.gather(share))


def save_async(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_state: dict,
    info: dict,
    process_group: dist.ProcessGroup | None = None,
) -> PendingSave:
    """Like :func:`save`, but returns once the state is copied to CPU (pinned memory on CUDA); the files
    are written in a background thread. ``process_group`` needs a CPU backend (gloo).

    Each save has a stager of its own, closed when it is finished: torch 2.11's ``async_save`` leaves a
    stager passed to it unusable for the next save (its copier table cleared: ``KeyError: <class 'type'>``
    at the second save on the H200), so page-locked buffers are allocated per save, not reused."""
    path = Path(path)
    tmp = _begin(path)
    state = _state(model, optimizer, train_state)
    stager = default_stager(next(model.parameters()).device)
    future = dcp.async_save(state, checkpoint_id=str(tmp), async_stager=stager, process_group=process_group)
    return PendingSave(path, tmp, sorted(state), info, future, process_group, state_bytes(state), stager)


def default_stager(device: torch.device):
    """DCP's stager: page-locked buffers on CUDA (plain CPU copies otherwise), synchronous staging."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    cuda = device.type == "cuda"
    options = StagingOptions(
        use_pinned_memory=cuda, use_shared_memory=False, use_async_staging=False, use_non_blocking_copy=cuda
    )
    return DefaultStager(options)


def _begin(path: Path) -> Path:
    if path.exists():
        raise FileExistsError(f"checkpoint {path} already exists; refusing to overwrite it")
    tmp = partial_path(path)
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    return tmp


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None, train_state: dict) -> dict:
    if optimizer is None:
        return {"model": get_model_state_dict(model), "train": train_state}
    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optimizer": osd, "train": train_state}


def _complete(
    tmp: Path, path: Path, contents: list[str], info: dict, extra_files: dict | None, hashed: dict
) -> dict:
    """``hashed``: the checksums of the DCP files, gathered from every rank."""
    info = {
        **info,
        "checkpoint_id": uuid.uuid4().hex,
        "contents": contents,
        "checksums": checksums.MANIFEST,
        "provenance": provenance(),
    }
    if dist.is_initialized():
        box = [info]
        dist.broadcast_object_list(box, src=0)
        info = box[0]
    if _rank() == 0:  # the folder is renamed by rank 0 once every rank's DCP files are written
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        write_json(tmp / CHECKPOINT_INFO, info)
        checksums.write_manifest(tmp, hashed)
        os.replace(tmp, path)
    _barrier()
    return info


def load(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    train_state: dict,
) -> dict:
    """Load in place (collectively). Model-only checkpoints (step-0 seeds) leave the optimizer fresh.

    `train_state` is a template dict whose values are replaced by the checkpoint's. Returns its info.
    """
    checksums.verify(path)
    info = read_checkpoint_info(path)
    if optimizer is not None and "optimizer_dropped" in info:  # checkpoint/retention.py
        raise ValueError(
            f"{path}: its optimizer state was dropped (runs.<run>.keep_optimizer_last_k), so training cannot "
            "resume from it with its AdamW moments; resume from a later segment, or raise "
            "keep_optimizer_last_k and rerun from step-0"
        )
    with_optimizer = optimizer is not None and "optimizer" in info["contents"]
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
    return info


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


# ------------------------------------------------------------------------------ reading model keys


def checkpoint_model_args(checkpoint_dir: str | Path) -> tuple[ModelSpec, dict]:
    """(ModelArgs or HFCausalArgs, meta.json) of an lmrepro DCP checkpoint (a run's or a converted base's),
    verified against its checksums.json: every reader of model keys starts here."""
    checksums.verify(checkpoint_dir)
    info = read_checkpoint_info(checkpoint_dir)
    if not has_model_info(info):
        raise ValueError(
            f"{checkpoint_dir}/{CHECKPOINT_INFO} has no model_args; it was not written by lmrepro"
        )
    return args_from_info(info), info


def model_tensor_specs(checkpoint_dir: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Our key -> (shape, dtype) of every model tensor in a DCP checkpoint, from its metadata only."""
    metadata = FileSystemReader(str(checkpoint_dir)).read_metadata()
    return {
        fqn.removeprefix(MODEL_PREFIX): (tuple(entry.size), entry.properties.dtype)
        for fqn, entry in metadata.state_dict_metadata.items()
        if fqn.startswith(MODEL_PREFIX) and isinstance(entry, TensorStorageMetadata)
    }


def check_model_tensors(
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]], args: ModelSpec, where: str | Path
) -> None:
    """Every parameter of ``args``'s model is stored with its shape, and nothing else is: else ValueError."""
    expected = model_shapes(args) if isinstance(args, ModelArgs) else model_state_shapes(args)
    for key, shape in expected.items():
        if key not in specs:
            raise ValueError(f"{where}: checkpoint is missing model key {key!r}")
        if specs[key][0] != shape:
            raise ValueError(
                f"{where}: model key {key!r} has shape {list(specs[key][0])}, the model args say "
                f"{list(shape)}"
            )
    tied_copy = {"output.weight"} if getattr(args, "tie_embeddings", False) else set()  # saved twice
    unexpected = sorted(set(specs) - set(expected) - tied_copy)
    if unexpected:
        raise ValueError(f"{where}: checkpoint has model keys the model does not have: {unexpected[:5]}")


def read_model_tensors(checkpoint_dir: str | Path, dests: dict[str, torch.Tensor]) -> None:
    """Fill ``dests`` (our key -> preallocated tensor of any dtype) from the checkpoint, these keys only."""
    dcp.load({"model": dests}, checkpoint_id=str(checkpoint_dir))


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(our model with the weights of a DCP checkpoint, its meta.json); single process, no process group."""
    args, info = checkpoint_model_args(checkpoint_dir)
    specs = model_tensor_specs(checkpoint_dir)
    check_model_tensors(specs, args, checkpoint_dir)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent buffers (RoPE, masks); every weight is overwritten below
    state = model.state_dict()  # shares storage with the parameters: DCP loads in place
    keys = model_shapes(args) if isinstance(args, ModelArgs) else [k for k in state if k in specs]
    read_model_tensors(checkpoint_dir, {key: state[key] for key in keys})
    model.eval()
    return model, info
