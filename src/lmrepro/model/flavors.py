"""Named model sizes ("flavors") and Meta-style ``params.json`` (de)serialisation.

``vocab_size`` is left at -1 in every flavor: it comes from the trained tokenizer via :func:`model_args`.
FFN widths are explicit; for the sizes we define ourselves they are ~3.5x dim rounded to a multiple of
256/512 (what Meta's ``multiple_of`` rule would give), for the Llama 3.x ones they match the releases.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lmrepro.model.args import ModelArgs, RopeScaling

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
    """A fresh copy of ``FLAVORS[flavor]`` with the tokenizer's vocab size and any field overrides.

    Errors name the trainer key (model.flavor, model.overrides.<field>) and what would be valid.
    """
    if flavor not in FLAVORS:
        raise ValueError(f"model.flavor = {flavor!r} is not a flavor; valid flavors: {', '.join(FLAVORS)}")
    fields = {f.name: f for f in dataclasses.fields(ModelArgs)}
    for key, value in overrides.items():
        if key not in fields or key == "vocab_size":
            valid = ", ".join(name for name in fields if name != "vocab_size")
            raise ValueError(f"model.overrides.{key} is not a field of the model; valid fields: {valid}")
        _check_override_type(key, value, FLAVORS[flavor])
    # replace() builds a new object (re-running validation), so FLAVORS itself is never mutated.
    try:
        return dataclasses.replace(FLAVORS[flavor], vocab_size=vocab_size, **overrides)
    except ValueError as e:
        shown = ", ".join(f"{k} = {v}" for k, v in overrides.items()) or "none"
        raise ValueError(f"model.overrides ({shown}) of flavor {flavor!r}: {e}") from None


def _check_override_type(key: str, value: Any, flavor: ModelArgs) -> None:
    """An override has the type of the field it replaces (ints for floats; a table for rope_scaling)."""
    default = getattr(flavor, key)
    if key == "rope_scaling" or (key == "n_kv_heads" and value is None):
        ok = value is None or isinstance(value, dict)
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = True
    if not ok:
        expected = "a table or null" if key == "rope_scaling" else type(default).__name__
        raise ValueError(f"model.overrides.{key} = {value!r} has the wrong type; expected {expected}")


# ---------------------------------------------------------------------------------------- params.json


def meta_ffn_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FeedForward sizing: 2/3 of 4*dim, times an optional multiplier, rounded up to multiple_of."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


# Meta's published (multiple_of, ffn_dim_multiplier) by (dim, FFN width), preferred where several pairs
# give the width: Llama 3.2 1B and 3B, Llama 3.x 8B, 70B and 405B, Llama 2 7B and 13B.
PUBLISHED_FFN_SIZING: dict[tuple[int, int], tuple[int, float | None]] = {
    (2048, 8192): (256, 1.5),
    (3072, 8192): (256, 1.0),
    (4096, 14336): (1024, 1.3),
    (8192, 28672): (4096, 1.3),
    (16384, 53248): (4096, 1.2),
    (4096, 11008): (256, None),
    (5120, 13824): (256, None),
}


def meta_ffn_sizing(dim: int, ffn_dim: int) -> tuple[int, float | None] | None:
    """(multiple_of, ffn_dim_multiplier) with which :func:`meta_ffn_dim` gives ``ffn_dim`` (what Meta's
    reference code and torchtune's Meta reader build), or None when no such pair is found.

    Meta's published pair of a released shape first; then the largest power-of-two multiple_of without a
    multiplier; then the largest multiplier of the fewest decimals (up to 4) with the largest multiple_of.
    """
    if (dim, ffn_dim) in PUBLISHED_FFN_SIZING:
        return PUBLISHED_FFN_SIZING[(dim, ffn_dim)]
    powers = [1 << k for k in range(12, -1, -1)]  # 4096 … 1
    for multiple_of in powers:
        if meta_ffn_dim(dim, multiple_of) == ffn_dim:
            return multiple_of, None
    base = int(2 * 4 * dim / 3)
    for decimals in range(1, 5):
        scale = 10**decimals
        for multiple_of in (m for m in powers if ffn_dim % m == 0):
            # int(multiplier * base) must land in (ffn_dim - multiple_of, ffn_dim]
            # (the largest such multiplier: the closest to ffn_dim / base, as Meta's are)
            first = math.ceil((ffn_dim - multiple_of + 1) / base * scale)
            for k in range(math.floor((ffn_dim + 1) / base * scale), max(first, 1) - 1, -1):
                if meta_ffn_dim(dim, multiple_of, k / scale) == ffn_dim:
                    return multiple_of, k / scale
    return None


def params_json(args: ModelArgs) -> dict[str, Any]:
    """The ``params.json`` written next to a ``consolidated.pth``.

    Meta's reference code (and torchtune's ``FullModelMetaCheckpointer`` readers) size the FFN from
    ``multiple_of``/``ffn_dim_multiplier``: they are written whenever a pair reproduces ``ffn_dim``
    (:func:`meta_ffn_sizing`), and left out otherwise (such a reader would then build the wrong FFN; our
    :func:`args_from_params_json` trusts the explicit ``ffn_dim`` either way).
    """
    scaling = args.rope_scaling
    sizing = meta_ffn_sizing(args.dim, args.ffn_dim)
    meta_ffn = {}
    if sizing is not None:
        multiple_of, multiplier = sizing
        meta_ffn = {"multiple_of": multiple_of} | (
            {"ffn_dim_multiplier": multiplier} if multiplier is not None else {}
        )
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
        **meta_ffn,
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
