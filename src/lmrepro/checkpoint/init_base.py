"""A run's step-0 weights from a converted base (``results/init/{base}/dcp``, see :mod:`.convert`).

A run started from a base must describe the same architecture in its own config, so that the run's
train.toml stays the one record of its model and the trainer never consults the base: every
:class:`ModelArgs` field must match except ``vocab_size`` (the base's ``vocab`` policy decides),
``max_seq_len`` (only the length of the RoPE table), ``causal`` (a deliberate choice to train
bidirectionally) and ``rope_theta`` (RoPE's base frequency is no weight: Llemma 7B trains its Code Llama
base, released with 1e6, at the 10,000 of its YAML). A mismatch is an error naming ``model.<field>``,
never a partial load. The check runs at parse time (:func:`lmrepro.workflow.check_config`, from the base's
config file) and again here, against the converted checkpoint. Another run's checkpoint (an init chain,
:func:`init_from_run_checkpoint`) loads strictly: every tensor, nothing left at the random init.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from lmrepro.checkpoint.convert import CONVERSION, VOCAB_KEYS
from lmrepro.checkpoint.dcp import (
    check_model_tensors,
    checkpoint_model_args,
    model_tensor_specs,
    read_model_tensors,
)
from lmrepro.checkpoint.hf import model_shapes
from lmrepro.model.hf_causal import HFCausalLM
from lmrepro.model.llama import ModelArgs, Transformer

INIT_RECORD = "init.json"
# ModelArgs fields a run may set differently from its base (see the module docstring).
FREE_FIELDS = ("vocab_size", "max_seq_len", "causal", "rope_theta")


def check_base_shape(run_args: ModelArgs, base_args: ModelArgs, base: str) -> None:
    """The run's model must be the base's architecture (see the module docstring); else ValueError."""
    for f in dataclasses.fields(ModelArgs):
        if f.name in FREE_FIELDS:
            continue
        ours, theirs = getattr(run_args, f.name), getattr(base_args, f.name)
        if ours != theirs:
            raise ValueError(
                f"model.{f.name} = {ours!r} but base {base} has {f.name} = {theirs!r}; a run started from a "
                "base keeps its architecture: set model.flavor / model.overrides to match"
            )


def init_from_pretrained(model: HFCausalLM, folder: str | Path) -> dict:
    """A transformers model's weights from a local folder (``from_pretrained``, float32), strictly: every
    tensor of the run's model, same shapes (the vocabulary included), nothing else."""
    from transformers import AutoModelForCausalLM

    pretrained = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True)
    theirs, ours = pretrained.state_dict(), model.state_dict()
    if set(theirs) != set(ours):
        diff = sorted(set(theirs) ^ set(ours))
        raise ValueError(f"{folder}: its model's keys differ from the run's model: {diff[:5]}")
    for key, value in ours.items():
        if value.shape != theirs[key].shape:
            raise ValueError(
                f"{folder}: {key} has shape {list(theirs[key].shape)}, the run's model {list(value.shape)}"
            )
    with torch.no_grad():
        for key, value in ours.items():
            value.copy_(theirs[key])
    return {"base": str(folder), "base_checkpoint_id": None, "vocab": "keep", "loaded": sorted(ours)}


def init_from_base(model: Transformer | HFCausalLM, base_dir: str | Path) -> dict:
    """Overwrite a (seeded, randomly initialised) model in place with a converted base's weights (a
    transformers model: with a local folder's, :func:`init_from_pretrained`).

    Keys the base left out (``vocab: drop``) keep their random init; with ``vocab: resize`` the
    embedding/output rows are resized. Returns the record that step-0 stores as ``init.json``.
    """
    if isinstance(model, HFCausalLM):
        return init_from_pretrained(model, base_dir)
    base_dir = Path(base_dir)
    base_args, info = checkpoint_model_args(base_dir)
    conversion_path = base_dir / CONVERSION
    if info.get("kind") != "base" or not conversion_path.is_file():
        raise ValueError(
            f"{base_dir} is not a converted base (no {CONVERSION}); convert it with convert_to_dcp"
        )
    policy = json.loads(conversion_path.read_text())["vocab"]
    check_base_shape(model.args, base_args, str(base_dir))
    specs = model_tensor_specs(base_dir)
    expected = model_shapes(model.args)
    unexpected = sorted(set(specs) - set(expected))
    if unexpected:
        raise ValueError(f"{base_dir}: base has model keys the run's model does not have: {unexpected[:5]}")

    state = model.state_dict()  # shares storage with the parameters
    direct: dict[str, torch.Tensor] = {}
    resized: dict[str, torch.Tensor] = {}
    random_init: dict[str, str] = {}
    for key, shape in expected.items():
        if key not in specs:
            if policy == "drop" and key in VOCAB_KEYS:
                random_init[key] = "vocab: drop; seeded random init of this run"
                continue
            raise ValueError(f"{base_dir}: base is missing model key {key!r}")
        stored = specs[key][0]
        if stored == shape:
            direct[key] = state[key]
        elif key in VOCAB_KEYS and stored[1:] == shape[1:] and policy == "resize":
            resized[key] = torch.empty(stored, dtype=specs[key][1])
        elif key in VOCAB_KEYS and stored[1:] == shape[1:]:
            raise ValueError(
                f"vocabulary mismatch: {key} of base {base_dir} has {stored[0]} rows but the run's "
                f"model.vocab_size is {shape[0]} (its tokenizer's); set bases.<name>.vocab to drop or resize"
            )
        else:
            raise ValueError(
                f"{base_dir}: model key {key!r} has shape {list(stored)}, the run needs {list(shape)}"
            )
    read_model_tensors(base_dir, {**direct, **resized})
    reshaped = {key: _resize_rows(state[key], rows) for key, rows in resized.items()}
    return {
        "base": str(base_dir),
        "base_checkpoint_id": info.get("checkpoint_id"),
        "vocab": policy,
        "loaded": sorted(direct),
        "random_init": random_init,
        "reshaped": reshaped,
    }


@torch.no_grad()
def _resize_rows(dest: torch.Tensor, rows: torch.Tensor) -> dict:
    """Copy the shared rows; new rows get the mean of the base's rows (Hewitt 2021: the new tokens start
    as an average token instead of noise, so their logits neither dominate nor vanish)."""
    n = min(dest.shape[0], rows.shape[0])
    dest[:n].copy_(rows[:n])
    if dest.shape[0] > n:
        dest[n:].copy_(rows.float().mean(dim=0, keepdim=True).expand(dest.shape[0] - n, -1))
        action = f"{dest.shape[0] - n} new rows = mean of the base's rows"
    else:
        action = f"the base's last {rows.shape[0] - n} rows dropped"
    return {"from": list(rows.shape), "to": list(dest.shape), "action": action}


def init_from_run_checkpoint(model: Transformer | HFCausalLM, checkpoint_dir: str | Path) -> dict:
    """Overwrite a model in place with another run's segment checkpoint's model weights (an init chain,
    runs.<run>.init = {run, step}), strictly: the same architecture and every tensor with its shape, nothing
    left at the random init. Returns the record that step-0 stores as ``init.json``."""
    checkpoint_dir = Path(checkpoint_dir)
    source_args, info = checkpoint_model_args(checkpoint_dir)
    if isinstance(model.args, ModelArgs):
        check_base_shape(model.args, source_args, str(checkpoint_dir))
    specs = model_tensor_specs(checkpoint_dir)
    check_model_tensors(specs, model.args, checkpoint_dir)
    dests = {key: value for key, value in model.state_dict().items() if key in specs}  # shares storage
    read_model_tensors(checkpoint_dir, dests)
    return {
        "run_checkpoint": str(checkpoint_dir),
        "base_checkpoint_id": info.get("checkpoint_id"),
        "step": info.get("step"),
        "loaded": sorted(dests),
    }
