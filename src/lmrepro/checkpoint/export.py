"""Export a DCP training checkpoint: model weights only → consolidated.pth + params.json, and an HF folder.

Only the model's keys are read from the DCP files (DCP loads exactly the keys asked for), so the
optimizer state is never loaded: exporting costs one copy of the model in memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from lmrepro.checkpoint.dcp import read_meta
from lmrepro.checkpoint.hf import save_hf_folder
from lmrepro.data.tokenizer import load_tokenizer
from lmrepro.model.flavors import args_from_params_json, params_json
from lmrepro.model.llama import ModelArgs, Transformer

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, dict]:
    """Our model with the weights of a DCP checkpoint (single process, no process group needed)."""
    meta = read_meta(checkpoint_dir)
    if "model_args" not in meta:
        raise ValueError(f"{checkpoint_dir}/meta.json has no model_args; it was not written by lmrepro")
    args: ModelArgs = args_from_params_json(meta["model_args"])
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent RoPE buffer; weights are overwritten below
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=str(checkpoint_dir))
    model.load_state_dict(state["model"], strict=True)
    model.eval()
    return model, meta


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path,
    dtype: str = "float32",
) -> dict:
    """Write out_dir/consolidated.pth, params.json, hf/ and export.json (atomically, as one folder)."""
    if dtype not in _DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not valid; choose one of {sorted(_DTYPES)}")
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model, meta = load_model(checkpoint_dir)
    tok = load_tokenizer(tokenizer_dir)
    if tok.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_dir} has {tok.vocab_size} tokens but checkpoint {checkpoint_dir} has "
            f"vocab_size {model.args.vocab_size}"
        )
    state = {k: v.to(_DTYPES[dtype]) for k, v in model.state_dict().items()}
    if model.args.tie_embeddings:
        state.pop("output.weight", None)
    torch.save(state, tmp / "consolidated.pth")
    (tmp / "params.json").write_text(json.dumps(params_json(model.args), indent=2) + "\n")
    log.info("wrote consolidated.pth (%d tensors, %s)", len(state), dtype)
    save_hf_folder(
        model.state_dict(),
        model.args,
        tmp / "hf",
        tokenizer_dir=tokenizer_dir,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        dtype=_DTYPES[dtype],
    )
    log.info("wrote Hugging Face folder hf/")
    info = {
        "checkpoint": str(checkpoint_dir),
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "dtype": dtype,
        "run": meta.get("run"),
    }
    (tmp / "export.json").write_text(json.dumps(info, indent=2) + "\n")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite an export")
    os.replace(tmp, out_dir)
    return info
