"""Export a DCP checkpoint's model: consolidated.pth + params.json, a Hugging Face folder, and its upload.

Only model keys are read (the readers of ``checkpoint/dcp.py``). Their names, shapes and dtypes come from
the checkpoint's DCP metadata, and DCP loads exactly the keys asked for, so optimizer state is never
loaded. The Hugging Face folder is written one tensor at a time (each parameter is loaded from the DCP
files when the writer needs it);
consolidated.pth holds the model once, in the export dtype, because ``torch.save`` takes the whole dict.
The same functions export a training checkpoint or a converted base (``results/init/{base}/dcp``,
whose meta.json has no step, tokens seen or run: export.json then records them as null).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from lmrepro.checkpoint.dcp import (
    check_model_tensors,
    checkpoint_model_args,
    load_model,
    model_tensor_specs,
    read_model_tensors,
)
from lmrepro.checkpoint.hf import model_shapes, write_hf_folder
from lmrepro.data.spike_tokenizer import load_any_tokenizer
from lmrepro.io import atomic_folder, write_json
from lmrepro.model.flavors import meta_ffn_sizing, params_json
from lmrepro.model.hf_causal import HFCausalArgs

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Written instead of hf/ for a bidirectional model (a masked LM): transformers' Llama classes always apply a
# causal mask, so an HF folder would load and run as a causal model whose logits are not ours.
NO_HF_FILE = "hf-not-exported.txt"
NO_HF_REASON = (
    "No Hugging Face folder: this model has bidirectional attention (training.objective = mlm) and "
    "transformers' Llama classes would run it with a causal mask, so their logits would not be ours; use "
    "consolidated.pth + params.json with lmrepro's Transformer.\n"
)


# ----------------------------------------------------------------------------------------- writing


def write_consolidated(checkpoint_dir: str | Path, out_dir: Path, dtype: torch.dtype) -> int:
    """out_dir/consolidated.pth (Meta names, model only) + params.json; returns the tensor count.

    params.json records the training objective and the attention (``causal`` / ``bidirectional``) beside
    the shape, and a masked LM's masking settings (what a user needs to run it as it was trained).

    With tied embeddings ``output.weight`` is the very tensor ``tok_embeddings.weight`` (torch.save
    stores it once), so both Meta's reference code and our model load the file strictly.
    """
    args, info = checkpoint_model_args(checkpoint_dir)
    state = {key: torch.empty(shape, dtype=dtype) for key, shape in model_shapes(args).items()}
    read_model_tensors(checkpoint_dir, state)
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    torch.save(state, out_dir / "consolidated.pth")
    write_json(out_dir / "params.json", {**params_json(args), **objective_record(args, info)})
    return len(state)


def objective_record(args, info: dict) -> dict:
    """{"objective", "attention"} (+ "mlm": the masking settings) of a checkpoint (meta.json ``info``)."""
    record = {
        "objective": info.get("objective", "causal"),  # converted bases and older checkpoints: causal
        "attention": "causal" if getattr(args, "causal", True) else "bidirectional",  # model.hf: causal LMs
    }
    return {**record, **({"mlm": info["mlm"]} if "mlm" in info else {})}


def dcp_to_hf(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    bos_token_id: int | list[int] | None = None,
    eos_token_id: int | list[int] | None = None,
    dtype: str | None = None,
    max_shard_bytes: int = 2**30,
) -> None:
    """A Hugging Face folder from a DCP checkpoint, one tensor in memory at a time (atomic).

    ``dtype`` None keeps the checkpoint's (which must then be one dtype); BOS/EOS default to the ones a
    converted base recorded from its source (``meta.json``: ``bos_token_id``/``eos_token_id``).
    """
    args, info = checkpoint_model_args(checkpoint_dir)
    specs = model_tensor_specs(checkpoint_dir)
    check_model_tensors(specs, args, checkpoint_dir)
    if dtype is None:
        stored = {str(d).removeprefix("torch.") for _, d in specs.values()}
        if len(stored) != 1:
            raise ValueError(f"{checkpoint_dir} mixes dtypes {sorted(stored)}; choose an export dtype")
        dtype = stored.pop()
    if dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not valid; choose one of {sorted(DTYPES)}")

    def get_tensor(key: str) -> torch.Tensor:
        shape, stored_dtype = specs[key]
        tensor = torch.empty(shape, dtype=stored_dtype)
        read_model_tensors(checkpoint_dir, {key: tensor})
        return tensor

    write_hf_folder(
        get_tensor,
        args,
        out_dir,
        tokenizer_dir=tokenizer_dir,
        bos_token_id=bos_token_id if bos_token_id is not None else info.get("bos_token_id"),
        eos_token_id=eos_token_id if eos_token_id is not None else info.get("eos_token_id"),
        dtype=DTYPES[dtype],
        max_shard_bytes=max_shard_bytes,
    )


def save_hf_causal(
    checkpoint_dir: str | Path,
    out_dir: Path,
    *,
    tokenizer_dir: str | Path,
    bos_token_id: int | None,
    eos_token_id: int | None,
    dtype: torch.dtype,
) -> None:
    """A transformers model's checkpoint as ``save_pretrained`` writes it, plus the run's tokenizer files.

    The whole model is loaded once (transformers' names already, see model/hf_causal.py); BOS/EOS come
    from the tokenizer, as in the Llama export.
    """
    model, _ = load_model(checkpoint_dir)
    hf = model.hf.to(dtype)
    for config in (hf.config, hf.generation_config):
        if config is not None:
            config.bos_token_id, config.eos_token_id = bos_token_id, eos_token_id
    hf.config.use_cache = True  # training turned the cache off per call; generation wants it
    hf.save_pretrained(str(out_dir), safe_serialization=True)
    for f in sorted(Path(tokenizer_dir).iterdir()):
        is_weights = f.name.endswith((".safetensors", ".safetensors.index.json", ".bin", ".pth"))
        if f.is_file() and not is_weights and not (out_dir / f.name).exists():
            shutil.copy2(f, out_dir / f.name)


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path,
    dtype: str = "float32",
) -> dict:
    """Write out_dir/hf/ and export.json (atomically, as one folder); a Llama also gets consolidated.pth
    + params.json (Meta's format), a transformers model (model.hf) only its ``save_pretrained`` folder.
    A bidirectional Llama gets NO_HF_FILE, one line saying why, instead of hf/.
    """
    if dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not valid; choose one of {sorted(DTYPES)}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite an export")
    args, info = checkpoint_model_args(checkpoint_dir)
    check_model_tensors(model_tensor_specs(checkpoint_dir), args, checkpoint_dir)
    tok = load_any_tokenizer(tokenizer_dir)  # a spike tokenizer's files travel into hf/ as they are
    if tok.vocab_size > args.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_dir} has {tok.vocab_size} tokens but checkpoint {checkpoint_dir} has "
            f"vocab_size {args.vocab_size}"
        )
    with atomic_folder(out_dir) as tmp:
        ids = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id}
        if isinstance(args, HFCausalArgs):
            hf_dtype = DTYPES[dtype]
            save_hf_causal(checkpoint_dir, tmp / "hf", tokenizer_dir=tokenizer_dir, dtype=hf_dtype, **ids)
            log.info("wrote Hugging Face folder hf/")
        else:
            count = write_consolidated(checkpoint_dir, tmp, DTYPES[dtype])
            log.info("wrote consolidated.pth (%d tensors, %s)", count, dtype)
            meta_ffn = meta_ffn_sizing(args.dim, args.ffn_dim)
            if meta_ffn is None:
                log.warning(
                    "params.json: no (multiple_of, ffn_dim_multiplier) of Meta's rule gives ffn_dim = %d at "
                    "dim = %d, so both are left out; readers that follow Meta's rule (torchtune's Meta "
                    "checkpointer, Meta's reference code) would build the wrong FFN: read ffn_dim",
                    args.ffn_dim,
                    args.dim,
                )
            if args.causal:
                dcp_to_hf(checkpoint_dir, tmp / "hf", tokenizer_dir=tokenizer_dir, dtype=dtype, **ids)
                log.info("wrote Hugging Face folder hf/")
            else:
                (tmp / NO_HF_FILE).write_text(NO_HF_REASON)
                log.info("bidirectional model: no Hugging Face folder (%s)", NO_HF_FILE)
        record = {
            "checkpoint": str(checkpoint_dir),
            "step": info.get("step"),  # a converted base has no step, no tokens seen and no run
            "tokens_seen": info.get("tokens_seen"),
            "dtype": dtype,
            "run": info.get("run"),
            **objective_record(args, info),
            "hf": "hf" if getattr(args, "causal", True) else None,
        }
        if not isinstance(args, HFCausalArgs):  # whether params.json sizes the FFN by Meta's rule too
            record["meta_ffn_sizing"] = meta_ffn is not None
        write_json(tmp / "export.json", record)
    return record


# ------------------------------------------------------------------------------------------ upload


def upload_plan(folder: str | Path) -> list[tuple[str, int]]:
    """(path relative to folder, bytes) of every file an upload of this HF folder would send."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder (no config.json)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not any(p.suffix == ".safetensors" for p in files):
        raise FileNotFoundError(f"{folder} has no .safetensors weights")
    return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in files]


def upload_hf_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    dry_run: bool = False,
    commit_message: str = "Upload lmrepro export",
) -> list[tuple[str, int]]:
    """Create the Hub repository (if needed) and upload the folder; ``dry_run`` touches no network.

    The token is read from the environment (``HF_TOKEN``) and only handed to huggingface_hub; it is
    never logged or returned.
    """
    plan = upload_plan(folder)
    if dry_run:
        return plan
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ValueError("HF_TOKEN is not set: export a Hugging Face write token to upload")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message=commit_message,
        token=token,
        ignore_patterns=[".*"],
    )
    return plan
