"""Tiny random Llama models written by transformers itself, shared by the conversion tests."""

from __future__ import annotations

import pytest
import torch

from lmrepro.checkpoint.hf import hf_config
from lmrepro.model.llama import ModelArgs, RopeScaling

transformers = pytest.importorskip("transformers")

VOCAB = 101
ATOL = 1e-4
# Small original context so the llama3 scaling hits all three bands (kept / blended / divided).
SCALING = RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64
)
CASES = {
    "gqa": dict(n_heads=4, n_kv_heads=2),
    "mha": dict(n_heads=4, n_kv_heads=4),
    "gqa-scaled": dict(n_heads=4, n_kv_heads=2, rope_scaling=SCALING),
    "mha-scaled-tied": dict(n_heads=4, n_kv_heads=4, rope_scaling=SCALING, tie_embeddings=True),
    "gqa-tied": dict(n_heads=8, n_kv_heads=2, tie_embeddings=True),
}


def tiny_args(**kw) -> ModelArgs:
    base = dict(dim=64, n_layers=2, n_heads=4, vocab_size=VOCAB, ffn_dim=96, max_seq_len=128, rope_theta=1e4)
    return ModelArgs(**{**base, **kw})


def random_tokens(b: int = 2, s: int = 48) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(7))


def perturb_(model: torch.nn.Module, seed: int) -> None:
    """Random values everywhere, norms included, so a mis-mapped tensor cannot hide behind init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.1 * noise)


def make_hf_model(args: ModelArgs, path, seed: int = 0, max_shard_size: str | None = None):
    """A random LlamaForCausalLM saved with save_pretrained (sharded when max_shard_size is given)."""
    cfg = transformers.LlamaConfig.from_dict(hf_config(args, bos_token_id=1, eos_token_id=2))
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg).eval()
    perturb_(model, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    return model
