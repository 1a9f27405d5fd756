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

Folders are written tensor by tensor (:func:`write_hf_folder`, on :mod:`.safetensors_io`), so an export
holds about one tensor, never the whole model; :mod:`.convert` reads them the same way. Only torch +
safetensors are needed here; transformers is not imported.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from lmrepro.checkpoint.safetensors_io import write_safetensors
from lmrepro.io import atomic_folder, write_json
from lmrepro.model.llama import ModelArgs, RopeScaling, Transformer

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
    bos_token_id: int | list[int] | None,
    eos_token_id: int | list[int] | None,
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


# ------------------------------------------------------------------------------------ tensor by tensor


def hf_name(key: str) -> str:
    """Our parameter name -> Hugging Face's (ValueError for a name that is no Llama parameter)."""
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    split = _split_layer_key(key, "layers.")
    if split is None or split[1] not in _LAYER_KEYS:
        raise ValueError(f"unexpected key {key!r} in state dict (not a Llama parameter name)")
    return f"model.layers.{split[0]}.{_LAYER_KEYS[split[1]]}"


def our_name(hf_key: str) -> str:
    """Hugging Face parameter name -> ours (ValueError for a name that is no LlamaForCausalLM parameter)."""
    top = {hf: ours for ours, hf in _TOP_KEYS.items()}
    if hf_key in top:
        return top[hf_key]
    layer_keys = {hf: ours for ours, hf in _LAYER_KEYS.items()}
    split = _split_layer_key(hf_key, "model.layers.")
    if split is None or split[1] not in layer_keys:
        raise ValueError(f"unexpected key {hf_key!r} in HF state dict (not a LlamaForCausalLM parameter)")
    return f"layers.{split[0]}.{layer_keys[split[1]]}"


def is_rope_buffer(hf_key: str) -> bool:
    """A RoPE buffer that old transformers versions saved; we recompute RoPE from the config."""
    return hf_key.endswith("rotary_emb.inv_freq")


def to_hf_tensor(key: str, value: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """Our tensor -> HF layout: wq/wk rows go from interleaved to rotate-half RoPE pairs."""
    if key.endswith("attention.wq.weight"):
        return _to_rotate_half(value, args.n_heads)
    if key.endswith("attention.wk.weight"):
        return _to_rotate_half(value, args.n_kv_heads)
    return value


def from_hf_tensor(key: str, value: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """HF tensor (named by our ``key``) -> our layout; inverse of :func:`to_hf_tensor`."""
    if key.endswith("attention.wq.weight"):
        return _to_interleaved(value, args.n_heads)
    if key.endswith("attention.wk.weight"):
        return _to_interleaved(value, args.n_kv_heads)
    return value


def model_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every stored parameter of our model in state-dict order, with its shape.

    With tied embeddings ``output.weight`` is left out: it is ``tok_embeddings.weight``.
    """
    with torch.device("meta"):
        sd = Transformer(args).state_dict()
    return {k: tuple(v.shape) for k, v in sd.items() if not (args.tie_embeddings and k == "output.weight")}


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


# -------------------------------------------------------------------------------------- state dicts


def to_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our (Meta-named) state dict -> HF names; with tied embeddings ``lm_head.weight`` is omitted."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        name = hf_name(key)
        if key == "output.weight" and args.tie_embeddings:
            continue  # HF re-ties lm_head to embed_tokens on load
        out[name] = to_hf_tensor(key, value, args)
    _check_complete(out, _expected_hf_keys(args), "converted HF")
    return out


def from_hf_state_dict(sd: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF state dict -> ours; with tied embeddings ``output.weight`` is the embedding tensor itself."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if is_rope_buffer(key):
            continue
        ours = our_name(key)
        if ours == "output.weight" and args.tie_embeddings:
            continue  # some tied checkpoints still carry a copy; the embedding is authoritative
        out[ours] = from_hf_tensor(ours, value, args)
    if args.tie_embeddings and "tok_embeddings.weight" in out:
        out["output.weight"] = out["tok_embeddings.weight"]
    expected = {f"layers.{i}.{k}" for i in range(args.n_layers) for k in _LAYER_KEYS} | set(_TOP_KEYS)
    _check_complete(out, expected, "HF")
    return out


def _expected_hf_keys(args: ModelArgs) -> set[str]:
    return {hf_name(k) for k in model_shapes(args)}


def _check_complete(sd: dict[str, torch.Tensor], expected: set[str], what: str) -> None:
    missing = sorted(expected - sd.keys())
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"{what} state dict is missing {missing[:5]}{more}")
    extra = sorted(sd.keys() - expected)
    if extra:
        raise ValueError(f"{what} state dict has keys beyond the model's {len(expected)}: {extra[:5]}")


# ------------------------------------------------------------------------------------------ folders


def _plan_shards(items: list[tuple[str, int]], max_shard_bytes: int) -> list[list[str]]:
    """Greedy split in order; an item larger than max_shard_bytes gets a shard of its own."""
    shards: list[list[str]] = [[]]
    size = 0
    for key, nbytes in items:
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def write_hf_folder(
    get_tensor: Callable[[str], torch.Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None,
    bos_token_id: int | list[int] | None,
    eos_token_id: int | list[int] | None,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2**30,
) -> None:
    """Write a folder that ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer`` load, streaming.

    ``get_tensor(key)`` returns one of our parameters (any dtype); it is called once per parameter, in
    state-dict order, and the tensor is written and dropped before the next call, so memory stays at
    about one tensor (two for wq/wk, which are permuted). Everything goes into a hidden ``.partial``
    sibling that is renamed to ``out_dir`` at the very end, so an interrupted export never leaves a
    complete-looking folder (an existing ``out_dir`` is replaced). Every file of ``tokenizer_dir`` is
    copied (not subfolders), except weights and the files we write ourselves (config.json,
    generation_config.json): the model's own files must win.
    """
    out_dir = Path(out_dir)
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer_dir {str(tokenizer_dir)!r} is not a directory")
    shapes = model_shapes(args)
    torch_dtype = str(dtype).removeprefix("torch.")
    config = hf_config(args, bos_token_id=bos_token_id, eos_token_id=eos_token_id, torch_dtype=torch_dtype)
    generation_config = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id}

    def hf_tensors(keys: list[str]) -> Iterator[torch.Tensor]:
        for key in keys:
            value = get_tensor(key).detach().to(device="cpu", dtype=dtype)
            if tuple(value.shape) != shapes[key]:
                raise ValueError(
                    f"{key}: tensor has shape {list(value.shape)}, the model args say {list(shapes[key])}"
                )
            yield to_hf_tensor(key, value, args)

    with atomic_folder(out_dir) as tmp_dir:
        shards = _plan_shards(
            [(k, math.prod(s) * dtype.itemsize) for k, s in shapes.items()], max_shard_bytes
        )
        weight_map = {}
        for i, keys in enumerate(shards, start=1):
            name = SINGLE_FILE if len(shards) == 1 else f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            entries = [(hf_name(k), dtype, shapes[k]) for k in keys]
            write_safetensors(tmp_dir / name, entries, hf_tensors(keys), {"format": "pt"})
            weight_map.update(dict.fromkeys((hf_name(k) for k in keys), name))
        if len(shards) > 1:
            total = sum(math.prod(s) * dtype.itemsize for s in shapes.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            write_json(tmp_dir / INDEX_FILE, index, sort_keys=True)
        write_json(tmp_dir / "config.json", config, sort_keys=True)
        write_json(tmp_dir / "generation_config.json", generation_config, sort_keys=True)
        if tokenizer_dir is not None:
            for f in sorted(Path(tokenizer_dir).iterdir()):
                is_weights = f.name.endswith((".safetensors", ".safetensors.index.json", ".bin", ".pth"))
                if f.is_file() and not is_weights and not (tmp_dir / f.name).exists():
                    shutil.copy2(f, tmp_dir / f.name)


def save_hf_folder(
    state_dict: dict[str, torch.Tensor],
    args: ModelArgs,
    out_dir: str | Path,
    *,
    tokenizer_dir: str | Path | None,
    bos_token_id: int | list[int] | None,
    eos_token_id: int | list[int] | None,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 2**30,
) -> None:
    """:func:`write_hf_folder` from an in-memory state dict (our names), checked for missing/extra keys."""
    if tokenizer_dir is not None and not Path(tokenizer_dir).is_dir():
        raise FileNotFoundError(f"tokenizer_dir {str(tokenizer_dir)!r} is not a directory")
    for key in state_dict:
        hf_name(key)  # a name that is no Llama parameter is an error, not silently dropped
    missing = [k for k in model_shapes(args) if k not in state_dict]
    if missing:
        raise ValueError(f"state dict is missing {missing[:5]}" + (" …" if len(missing) > 5 else ""))
    write_hf_folder(
        state_dict.__getitem__,
        args,
        out_dir,
        tokenizer_dir=tokenizer_dir,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        dtype=dtype,
        max_shard_bytes=max_shard_bytes,
    )


def read_hf_config(hf_dir: str | Path) -> tuple[dict[str, Any], ModelArgs]:
    """(config.json as a dict, ModelArgs) of an HF Llama folder; errors name the folder or field."""
    config_path = Path(hf_dir) / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in HF folder {str(hf_dir)!r}")
    try:
        cfg = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path} is not valid JSON: {e}") from e
    try:
        return cfg, args_from_hf_config(cfg)
    except ValueError as e:
        raise ValueError(f"{config_path}: {e}") from None


def hf_weight_files(hf_dir: str | Path) -> list[Path]:
    """The safetensors files of an HF folder (all of the index's shards, or model.safetensors)."""
    hf_dir = Path(hf_dir)
    if (hf_dir / INDEX_FILE).is_file():
        weight_map = json.loads((hf_dir / INDEX_FILE).read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{hf_dir / INDEX_FILE} has no weight_map")
        files = [hf_dir / name for name in sorted(set(weight_map.values()))]
    elif (hf_dir / SINGLE_FILE).is_file():
        files = [hf_dir / SINGLE_FILE]
    else:
        raise FileNotFoundError(
            f"HF folder {str(hf_dir)!r} has neither {SINGLE_FILE} nor {INDEX_FILE} "
            "(only safetensors checkpoints are supported)"
        )
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"missing checkpoint shard {str(path)!r} listed in {INDEX_FILE}")
    return files


def load_hf_state_dict(hf_dir: str | Path) -> tuple[dict[str, torch.Tensor], ModelArgs]:
    """Read an HF Llama folder into memory: (HF-named state dict on CPU, ModelArgs). Use
    :func:`from_hf_state_dict` to get our names; :mod:`lmrepro.checkpoint.convert` streams instead."""
    _, args = read_hf_config(hf_dir)
    sd: dict[str, torch.Tensor] = {}
    for path in hf_weight_files(hf_dir):
        sd.update(load_file(path, device="cpu"))
    return sd, args
