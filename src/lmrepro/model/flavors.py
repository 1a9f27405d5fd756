"""Named model sizes ("flavors") and Meta-style ``params.json`` (de)serialisation.

``vocab_size`` is left at -1 in every flavor: it comes from the trained tokenizer via :func:`model_args`.
FFN widths are explicit; for the sizes we define ourselves they are ~3.5x dim rounded to a multiple of
256/512 (what Meta's ``multiple_of`` rule would give), for the Llama 3.x ones they match the releases.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lmrepro.model.llama import ModelArgs, RopeScaling

_LLAMA3_ROPE_THETA = 500000.0

FLAVORS: dict[str, ModelArgs] = {
    # The CPU default: small enough for unit tests and laptop smoke runs.
    "debug": ModelArgs(
        dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=384, max_seq_len=512, rope_theta=10000.0
    ),
    # gpt-neuro-arch's sizes (its torchtitan/models/llama/__init__.py: FFN = 2/3·4·dim·1.3 rounded up to a
    # multiple of 1024), with the rope_theta its training TOMLs set (10,000; the fork's flavor value 1e6 is
    # always overridden there by its CLI default, then by the TOMLs).
    "250M": ModelArgs(dim=1024, n_layers=16, n_heads=16, n_kv_heads=8, ffn_dim=4096, rope_theta=10000.0),
    "870M": ModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=7168, rope_theta=10000.0),
    "2B": ModelArgs(dim=3072, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=11264, rope_theta=10000.0),
    "5B": ModelArgs(dim=4096, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=14336, rope_theta=10000.0),
    "7B": ModelArgs(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, ffn_dim=14336, rope_theta=10000.0),
    # torchtitan's llama3 "1B" (torchtitan-mlm trains it as a masked LM): the 870M shape with Llama 3's
    # rope_theta, no RoPE scaling and an untied output layer; not the Llama-3.2-1B release below.
    "1B": ModelArgs(
        dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, ffn_dim=7168, rope_theta=_LLAMA3_ROPE_THETA
    ),
    # training-custom-llama's two model configs (its train.py, March 2025; seed-systems.md §4.1): Llama-3
    # blocks with theta 500,000; FFN widths by Meta's rule with its defaults (multiple_of 256, no multiplier):
    # 2/3 · 4 · dim rounded up to 256.
    "custom-llama": ModelArgs(dim=512, n_layers=2, n_heads=2, n_kv_heads=2, ffn_dim=1536, max_seq_len=512),
    "custom-llama-better": ModelArgs(
        dim=768, n_layers=16, n_heads=16, n_kv_heads=8, ffn_dim=2048, max_seq_len=1024
    ),
    # Architectures of the released models (max_seq_len as in their HF max_position_embeddings).
    # Code Llama (Llemma's bases, seed-systems.md §3.3): MHA 7B and GQA-8 34B, released with rope_theta 1e6.
    "codellama-7B": ModelArgs(
        dim=4096, n_layers=32, n_heads=32, n_kv_heads=32, ffn_dim=11008, rope_theta=1e6, max_seq_len=16384
    ),
    "codellama-34B": ModelArgs(
        dim=8192, n_layers=48, n_heads=64, n_kv_heads=8, ffn_dim=22016, rope_theta=1e6, max_seq_len=16384
    ),
    "llama3.2-1B": ModelArgs(
        dim=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=8192,
        rope_theta=_LLAMA3_ROPE_THETA,
        rope_scaling=RopeScaling(
            factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
        ),
        max_seq_len=131072,
        tie_embeddings=True,
    ),
    "llama3.1-8B": ModelArgs(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        ffn_dim=14336,
        rope_theta=_LLAMA3_ROPE_THETA,
        rope_scaling=RopeScaling(
            factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
        ),
        max_seq_len=131072,
    ),
}


def model_args(flavor: str, vocab_size: int, **overrides: Any) -> ModelArgs:
    """A fresh copy of ``FLAVORS[flavor]`` with the tokenizer's vocab size and any field overrides."""
    if flavor not in FLAVORS:
        raise ValueError(f"unknown model flavor {flavor!r}; valid flavors: {', '.join(FLAVORS)}")
    valid_fields = [f.name for f in dataclasses.fields(ModelArgs)]
    unknown = [k for k in overrides if k not in valid_fields]
    if unknown:
        raise ValueError(
            f"unknown ModelArgs override(s) {unknown} for flavor {flavor!r}; "
            f"valid fields: {', '.join(valid_fields)}"
        )
    # replace() builds a new object (re-running validation), so FLAVORS itself is never mutated.
    return dataclasses.replace(FLAVORS[flavor], vocab_size=vocab_size, **overrides)


# ---------------------------------------------------------------------------------------- params.json


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FeedForward sizing: 2/3 of 4*dim, times an optional multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def params_json(args: ModelArgs) -> dict[str, Any]:
    """The ``params.json`` written next to a ``consolidated.pth``.

    Meta's reference code reads the first block of keys; it has no ``ffn_dim`` field, but since we also
    omit ``multiple_of``/``ffn_dim_multiplier`` it would fall back to its defaults, so readers should use
    :func:`args_from_params_json`, which trusts our explicit ``ffn_dim``.
    """
    scaling = args.rope_scaling
    return {
        # Meta's keys.
        "dim": args.dim,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "n_kv_heads": args.n_kv_heads,
        "vocab_size": args.vocab_size,
        "norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "use_scaled_rope": scaling is not None,
        # Ours: exact values that Meta's format leaves implicit.
        "ffn_dim": args.ffn_dim,
        "tie_embeddings": args.tie_embeddings,
        "rope_scaling": dataclasses.asdict(scaling) if scaling is not None else None,
        "max_seq_len": args.max_seq_len,
        "causal": args.causal,
    }


def args_from_params_json(d: dict[str, Any]) -> ModelArgs:
    """Inverse of :func:`params_json`; also reads Meta's own params.json (Llama 2/3.x releases).

    For a Meta file: ``ffn_dim`` is derived with Meta's rule, ``use_scaled_rope: true`` without a
    ``rope_scaling`` dict means Llama 3.1's constants (factor ``rope_scaling_factor`` or 8, low 1,
    high 4, original context 8192), a missing ``rope_theta`` is Llama 2's 10000 (every Llama 3 file
    has the key), and a missing ``max_seq_len``/``norm_eps`` takes the :class:`ModelArgs` default.
    """
    for key in ("dim", "n_layers", "n_heads"):
        if key not in d:
            raise ValueError(f"params.json is missing required key {key!r} (has: {sorted(d)})")
    defaults = {f.name: f.default for f in dataclasses.fields(ModelArgs)}

    if "ffn_dim" in d:
        ffn_dim = d["ffn_dim"]
    else:
        ffn_dim = meta_ffn_dim(d["dim"], d.get("multiple_of", 256), d.get("ffn_dim_multiplier"))

    if "rope_scaling" in d:
        rope_scaling = d["rope_scaling"]  # dict or None; ModelArgs validates the dict's keys
    elif d.get("use_scaled_rope", False):
        rope_scaling = RopeScaling(
            factor=float(d.get("rope_scaling_factor", 8.0)),
            low_freq_factor=1.0,
            high_freq_factor=float(d.get("high_freq_factor", 4.0)),
            original_max_position_embeddings=8192,
        )
    else:
        rope_scaling = None

    return ModelArgs(
        dim=d["dim"],
        n_layers=d["n_layers"],
        n_heads=d["n_heads"],
        n_kv_heads=d.get("n_kv_heads"),
        vocab_size=d.get("vocab_size", -1),
        ffn_dim=ffn_dim,
        norm_eps=d.get("norm_eps", defaults["norm_eps"]),
        rope_theta=d.get("rope_theta", 10000.0),
        rope_scaling=rope_scaling,
        max_seq_len=d.get("max_seq_len", defaults["max_seq_len"]),
        causal=d.get("causal", defaults["causal"]),
        tie_embeddings=d.get("tie_embeddings", defaults["tie_embeddings"]),
    )
