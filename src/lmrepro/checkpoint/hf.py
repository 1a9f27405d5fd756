"""Conversion between our state dict (Meta names) and Hugging Face ``LlamaForCausalLM`` folders.

Two differences besides names:

* RoPE layout. We (like Meta) rotate channel pairs (2j, 2j+1) of each head; transformers rotates
  (j, j + head_dim/2) ("rotate_half"). Permuting the output rows of wq and wk within each head makes
  the two equivalent: q·k is unchanged because q and k get the same permutation. This is the
  ``permute`` of transformers' ``convert_llama_weights_to_hf.py``; wk uses n_kv_heads.
* Config. transformers 5 stores RoPE as ``rope_parameters: {rope_type, rope_theta, ...}``; 4.x reads a
  top-level ``rope_theta`` plus ``rope_scaling`` (None or ``{rope_type: llama3, ...}``). We write all
  three: 5.x lets a non-null ``rope_scaling`` take precedence and fills its ``rope_theta`` from the
  top-level key, so both generations load the same model. We read either form.

Only torch + safetensors are needed here; transformers is not imported.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lmrepro.model.llama import ModelArgs, RopeScaling

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# Per-layer names: ours -> HF (under "model.layers.{i}.").
_LAYER_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


# ------------------------------------------------------------------------------------------- config


def hf_config(
    args: ModelArgs,
    *,
    bos_token_id: int | None,
    eos_token_id: int | None,
    pad_token_id: int | None = None,
    torch_dtype: str = "float32",
) -> dict[str, Any]:
    """A ``config.json`` dict for ``LlamaForCausalLM`` that transformers 4.x and 5.x both read."""
    if not args.causal:
        raise ValueError("LlamaForCausalLM is causal; a model trained with causal=False cannot be exported")
    if args.vocab_size <= 0:
        raise ValueError(f"ModelArgs.vocab_size must be set before export, got {args.vocab_size}")
    rope_scaling = None
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": args.rope_theta}
    if args.rope_scaling is not None:
        s = args.rope_scaling
        rope_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        }
        rope_parameters = {**rope_scaling, "rope_theta": args.rope_theta}
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,  # 4.x
        "rope_scaling": rope_scaling,  # 4.x (5.x: takes precedence over rope_parameters when non-null)
        "rope_parameters": rope_parameters,  # 5.x
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": torch_dtype,  # 5.x maps the legacy key onto `dtype` silently
    }


def _require(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg:
        raise ValueError(f"HF config is missing required field {key!r}")
    return cfg[key]


def args_from_hf_config(cfg: dict[str, Any]) -> ModelArgs:
    """ModelArgs from a Llama ``config.json`` (4.x or 5.x style); defaults are LlamaConfig's."""
    model_type = cfg.get("model_type")
    if model_type != "llama":
        raise ValueError(f"HF config has model_type={model_type!r}; only 'llama' can be converted")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False)):
        if cfg.get(key, ok) != ok:
            raise ValueError(f"HF config field {key!r}={cfg[key]!r} is not supported (needs {ok!r})")
    dim = _require(cfg, "hidden_size")
    n_heads = _require(cfg, "num_attention_heads")
    head_dim = cfg.get("head_dim") or dim // n_heads
    if head_dim * n_heads != dim:
        raise ValueError(
            f"HF config field 'head_dim'={head_dim} must equal hidden_size / num_attention_heads "
            f"({dim} / {n_heads}) for this model"
        )

    # 5.x gives a non-null rope_scaling precedence over rope_parameters; mirror that.
    rope = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    rope_theta = float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    max_seq_len = cfg.get("max_position_embeddings", 2048)
    original_max = rope.get("original_max_position_embeddings", max_seq_len)  # HF's default
    rope_scaling = None
    if rope_type == "llama3":
        try:
            rope_scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(original_max),
            )
        except KeyError as e:
            raise ValueError(f"HF config's llama3 rope scaling is missing field {e.args[0]!r}") from e
    elif rope_type != "default":
        raise ValueError(f"HF config rope_type={rope_type!r} is not supported (only 'default', 'llama3')")

    return ModelArgs(
        dim=dim,
        n_layers=_require(cfg, "num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        vocab_size=_require(cfg, "vocab_size"),
        ffn_dim=_require(cfg, "intermediate_size"),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_seq_len=max_seq_len,
        causal=True,
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


# -------------------------------------------------------------------------------------- state dicts


def _to_rotate_half(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of each head: interleaved pairs (0,1),(2,3).. -> halves (0,hd/2),(1,hd/2+1)..; w [n*hd, in]."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.reshape(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`_to_rotate_half`."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.reshape(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)


def _split_layer_key(key: str, prefix: str) -> tuple[str, str] | None:
    """'prefix{i}.rest' -> (i, rest), else None."""
    if not key.startswith(prefix):
        return None
    layer, _, rest = key[len(prefix) :].partition(".")
    return (layer, rest) if layer.isdigit() else None


def to_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our (Meta-named) state dict -> HF names; with tied embeddings ``lm_head.weight`` is omitted."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TOP_KEYS:
            if key == "output.weight" and args.tie_embeddings:
                continue  # HF re-ties lm_head to embed_tokens on load
            out[_TOP_KEYS[key]] = value
            continue
        split = _split_layer_key(key, "layers.")
        if split is None or split[1] not in _LAYER_KEYS:
            raise ValueError(f"unexpected key {key!r} in state dict (not a Llama parameter name)")
        layer, rest = split
        if rest == "attention.wq.weight":
            value = _to_rotate_half(value, args.n_heads)
        elif rest == "attention.wk.weight":
            value = _to_rotate_half(value, args.n_kv_heads)
        out[f"model.layers.{layer}.{_LAYER_KEYS[rest]}"] = value
    _check_complete(out, _expected_hf_keys(args), "converted HF")
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF state dict -> ours; with tied embeddings ``output.weight`` is the embedding tensor itself."""
    top = {hf: ours for ours, hf in _TOP_KEYS.items()}
    layer_keys = {hf: ours for ours, hf in _LAYER_KEYS.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # a buffer that old transformers versions saved; we recompute RoPE
        if key in top:
            if key == "lm_head.weight" and args.tie_embeddings:
                continue  # some tied checkpoints still carry a copy; the embedding is authoritative
            out[top[key]] = value
            continue
        split = _split_layer_key(key, "model.layers.")
        if split is None or split[1] not in layer_keys:
            raise ValueError(f"unexpected key {key!r} in HF state dict (not a LlamaForCausalLM parameter)")
        layer, rest = split
        ours = layer_keys[rest]
        if ours == "attention.wq.weight":
            value = _to_interleaved(value, args.n_heads)
        elif ours == "attention.wk.weight":
            value = _to_interleaved(value, args.n_kv_heads)
        out[f"layers.{layer}.{ours}"] = value
    if args.tie_embeddings and "tok_embeddings.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    expected = {f"layers.{i}.{k}" for i in range(args.n_layers) for k in _LAYER_KEYS} | set(_TOP_KEYS)
    _check_complete(out, expected, "HF")
    return out


def _expected_hf_keys(args: ModelArgs) -> set[str]:
    keys = {f"model.layers.{i}.{k}" for i in range(args.n_layers) for k in _LAYER_KEYS.values()}
    keys |= {"model.embed_tokens.weight", "model.norm.weight"}
    if not args.tie_embeddings:
        keys.add("lm_head.weight")
    return keys


def _check_complete(sd: dict[str, torch.Tensor], expected: set[str], what: str) -> None:
    missing = sorted(expected - sd.keys())
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{what} state dict is missing {missing[:5]}{more}")
    extra = sorted(sd.keys() - expected)
    if extra:
        raise ValueError(f"{what} state dict has keys beyond the model's {len(expected)}: {extra[:5]}")


# ------------------------------------------------------------------------------------------ folders


def _shards(sd: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than max_shard_bytes gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, t in sd.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    return shards


def save_hf_folder(
    state_dict: dict[str, torch.Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None,
    bos_token_id: int | None,
    eos_token_id: int | None,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2**30,
) -> None:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer`` load.

    Everything is written into a hidden sibling folder that is renamed to ``out_dir`` at the very end, so
    an interrupted export never leaves a complete-looking folder (an existing ``out_dir`` is replaced).
    Every file of ``tokenizer_dir`` is copied (not subfolders), except weights and files we write
    ourselves (config.json, generation_config.json): the model's own files must win.
    """
    out_dir = Path(out_dir)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer_dir {str(tokenizer_dir)!r} is not a directory")
    hf_sd = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in state_dict.items()}
    hf_sd = to_hf_state_dict(hf_sd, args)
    torch_dtype = str(dtype).removeprefix("torch.")
    config = hf_config(args, bos_token_id=bos_token_id, eos_token_id=eos_token_id, torch_dtype=torch_dtype)
    generation_config = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        shards = _shards(hf_sd, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], tmp_dir / SINGLE_FILE, metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp_dir / name, metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in hf_sd.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            _write_json(tmp_dir / INDEX_FILE, index)
        _write_json(tmp_dir / "config.json", config)
        _write_json(tmp_dir / "generation_config.json", generation_config)
        if tokenizer_dir is not None:
            for f in sorted(Path(tokenizer_dir).iterdir()):
                is_weights = f.name.endswith((".safetensors", ".safetensors.index.json", ".bin"))
                if f.is_file() and not is_weights and not (tmp_dir / f.name).exists():
                    shutil.copy2(f, tmp_dir / f.name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp_dir.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_hf_state_dict(hf_dir: str | Path) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """Read an HF Llama folder: (HF-named state dict on CPU, ModelArgs). Use :func:`from_hf_state_dict`
    to get our names."""
    hf_dir = Path(hf_dir)
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in HF folder {str(hf_dir)!r}")
    args = args_from_hf_config(json.loads(config_path.read_text()))

    if (hf_dir / INDEX_FILE).is_file():
        weight_map = json.loads((hf_dir / INDEX_FILE).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (hf_dir / SINGLE_FILE).is_file():
        files = [SINGLE_FILE]
    else:
        raise FileNotFoundError(
            f"HF folder {str(hf_dir)!r} has neither {SINGLE_FILE} nor {INDEX_FILE} "
            "(only safetensors checkpoints are supported)"
        )
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        path = hf_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"missing checkpoint shard {str(path)!r} listed in {INDEX_FILE}")
        sd.update(load_file(path, device="cpu"))
    return sd, args
