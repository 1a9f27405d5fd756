"""Export a DCP checkpoint's model: consolidated.pth + params.json, a Hugging Face folder, and its upload.

Only model keys are read. Their names, shapes and dtypes come from the checkpoint's DCP metadata, and
DCP loads exactly the keys asked for, so optimizer state is never loaded. The Hugging Face folder is
written one tensor at a time (each parameter is loaded from the DCP files when the writer needs it);
consolidated.pth holds the model once, in the export dtype, because ``torch.save`` takes the whole dict.
The same functions export a training checkpoint or a converted base (``results/init/{base}/dcp``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from lmrepro.checkpoint.dcp import read_meta
from lmrepro.checkpoint.hf import model_shapes, write_hf_folder
from lmrepro.data.tokenizer import load_tokenizer
from lmrepro.model.flavors import args_from_params_json, params_json
from lmrepro.model.llama import ModelArgs, Transformer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MODEL_PREFIX = "model."  # DCP checkpoints hold {"model": ..., "optimizer": ..., "train": ...}


# ------------------------------------------------------------------------------ reading model keys


def checkpoint_model_args(checkpoint_dir: str | Path) -> tuple[ModelArgs, dict]:
    """(ModelArgs, meta.json) of an lmrepro DCP checkpoint."""
    meta = read_meta(checkpoint_dir)
    if "model_args" not in meta:
        raise ValueError(f"{checkpoint_dir}/meta.json has no model_args; it was not written by lmrepro")
    return args_from_params_json(meta["model_args"]), meta


def model_tensor_specs(checkpoint_dir: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Our key -> (shape, dtype) of every model tensor in a DCP checkpoint, from its metadata only."""
    metadata = FileSystemReader(str(checkpoint_dir)).read_metadata()
    return {
        fqn.removeprefix(MODEL_PREFIX): (tuple(entry.size), entry.properties.dtype)
        for fqn, entry in metadata.state_dict_metadata.items()
        if fqn.startswith(MODEL_PREFIX) and isinstance(entry, TensorStorageMetadata)
    }


def check_model_tensors(
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]], args: ModelArgs, where: str | Path
) -> None:
    """Every parameter of ``args``'s model is stored with its shape, and nothing else is: else ValueError."""
    expected = model_shapes(args)
    for key, shape in expected.items():
        if key not in specs:
            raise ValueError(f"{where}: checkpoint is missing model key {key!r}")
        if specs[key][0] != shape:
            raise ValueError(
                f"{where}: model key {key!r} has shape {list(specs[key][0])}, the model args say "
                f"{list(shape)}"
            )
    tied_copy = {"output.weight"} if args.tie_embeddings else set()  # training saves both tied names
    unexpected = sorted(set(specs) - set(expected) - tied_copy)
    if unexpected:
        raise ValueError(f"{where}: checkpoint has model keys the model does not have: {unexpected[:5]}")


def read_model_tensors(checkpoint_dir: str | Path, dests: dict[str, torch.Tensor]) -> None:
    """Fill ``dests`` (our key -> preallocated tensor of any dtype) from the checkpoint, these keys only."""
    dcp.load({"model": dests}, checkpoint_id=str(checkpoint_dir))


def load_model(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Transformer, dict]:
    """Our model with the weights of a DCP checkpoint (single process, no process group needed)."""
    args, meta = checkpoint_model_args(checkpoint_dir)
    check_model_tensors(model_tensor_specs(checkpoint_dir), args, checkpoint_dir)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    model.init_weights()  # fills the non-persistent RoPE buffer; every weight is overwritten below
    state = model.state_dict()  # shares storage with the parameters: DCP loads in place
    read_model_tensors(checkpoint_dir, {key: state[key] for key in model_shapes(args)})
    model.eval()
    return model, meta


# ----------------------------------------------------------------------------------------- writing


def write_consolidated(checkpoint_dir: str | Path, out_dir: Path, dtype: torch.dtype) -> int:
    """out_dir/consolidated.pth (Meta names, model only) + params.json; returns the tensor count.

    With tied embeddings ``output.weight`` is the very tensor ``tok_embeddings.weight`` (torch.save
    stores it once), so both Meta's reference code and our model load the file strictly.
    """
    args, _ = checkpoint_model_args(checkpoint_dir)
    state = {key: torch.empty(shape, dtype=dtype) for key, shape in model_shapes(args).items()}
    read_model_tensors(checkpoint_dir, state)
    if args.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    torch.save(state, out_dir / "consolidated.pth")
    (out_dir / "params.json").write_text(json.dumps(params_json(args), indent=2) + "\n")
    return len(state)


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
    args, meta = checkpoint_model_args(checkpoint_dir)
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
        bos_token_id=bos_token_id if bos_token_id is not None else meta.get("bos_token_id"),
        eos_token_id=eos_token_id if eos_token_id is not None else meta.get("eos_token_id"),
        dtype=DTYPES[dtype],
        max_shard_bytes=max_shard_bytes,
    )


def export_checkpoint(
    checkpoint_dir: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path,
    dtype: str = "float32",
) -> dict:
    """Write out_dir/consolidated.pth, params.json, hf/ and export.json (atomically, as one folder)."""
    if dtype not in DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not valid; choose one of {sorted(DTYPES)}")
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite an export")
    args, meta = checkpoint_model_args(checkpoint_dir)
    check_model_tensors(model_tensor_specs(checkpoint_dir), args, checkpoint_dir)
    tok = load_tokenizer(tokenizer_dir)
    if tok.vocab_size > args.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_dir} has {tok.vocab_size} tokens but checkpoint {checkpoint_dir} has "
            f"vocab_size {args.vocab_size}"
        )
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        count = write_consolidated(checkpoint_dir, tmp, DTYPES[dtype])
        log.info("wrote consolidated.pth (%d tensors, %s)", count, dtype)
        dcp_to_hf(
            checkpoint_dir,
            tmp / "hf",
            tokenizer_dir=tokenizer_dir,
            bos_token_id=tok.bos_id,
            eos_token_id=tok.eos_id,
            dtype=dtype,
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
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


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
