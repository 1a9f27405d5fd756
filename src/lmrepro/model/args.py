"""The Llama model's shape (ModelArgs) and RoPE scaling: plain dataclasses without torch, so that the
workflow checks a run's model shape while it builds the DAG (lmrepro.workflow.check_config)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RopeScaling:
    """Llama 3.1 RoPE frequency scaling (transformers' ``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self) -> None:
        # Normalise types so that configs written with ints (factor: 8) compare and serialise alike.
        self.factor = float(self.factor)
        self.low_freq_factor = float(self.low_freq_factor)
        self.high_freq_factor = float(self.high_freq_factor)
        self.original_max_position_embeddings = int(self.original_max_position_embeddings)
        if not self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                f"rope_scaling needs low_freq_factor < high_freq_factor, got {self.low_freq_factor} "
                f">= {self.high_freq_factor}"
            )


@dataclass
class ModelArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None  # None means n_heads (plain multi-head attention); normalised below
    vocab_size: int = -1  # -1 until filled from the tokenizer
    ffn_dim: int = -1  # SwiGLU hidden size, given explicitly (no multiple_of rounding here)
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_scaling: RopeScaling | None = None
    max_seq_len: int = 2048
    causal: bool = True
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if isinstance(self.rope_scaling, dict):  # e.g. straight from a YAML/JSON config
            try:
                self.rope_scaling = RopeScaling(**self.rope_scaling)
            except TypeError as e:
                raise ValueError(
                    f"rope_scaling {self.rope_scaling} is invalid: expected exactly the keys factor, "
                    "low_freq_factor, high_freq_factor, original_max_position_embeddings"
                ) from e
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelArgs.{name} must be a positive integer, got {getattr(self, name)}")
        if self.dim % self.n_heads != 0 or self.head_dim % 2 != 0:
            raise ValueError(
                f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) into an even head_dim"
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads
