"""Attention kernels and one-GPU numerics switches: the flash-attn route's plumbing, its refusal off CUDA,
float8's refusal off CUDA, and the residual-stream dtype under autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmrepro.model.attention import flash_attn_kernel, sdpa_backend
from lmrepro.model.llama import ModelArgs, Transformer
from lmrepro.train.float8 import check_float8


def tiny(causal: bool = True) -> Transformer:
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=50, causal=causal)
    return Transformer(args)


def grouped_reference_kernel(q, k, v, causal):
    """What a flash-attn kernel computes, written with SDPA: [b, s, h, d] in and out, grouped k/v."""
    rep = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
    )
    return out.transpose(1, 2)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_a_kernel_gets_grouped_kv_in_sequence_major_layout(causal):
    model = tiny(causal)
    tokens = torch.randint(0, 50, (2, 12))
    expected = model(tokens)
    seen = []

    def kernel(q, k, v, is_causal):
        seen.append((tuple(q.shape), tuple(k.shape), is_causal))
        return grouped_reference_kernel(q, k, v, is_causal)

    model.set_attention_kernel(kernel)
    got = model(tokens)
    assert seen[0] == ((2, 12, 4, 16), (2, 12, 2, 16), causal)  # [b, s, h, hd], kv heads not repeated
    assert len(seen) == 2  # every layer
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    model.set_attention_kernel(None)
    assert torch.equal(model(tokens), expected)


def test_flash_attn_and_float8_are_refused_off_cuda_naming_their_key():
    with pytest.raises(ValueError, match=r"^training\.attention_backend = 'flash_attn' needs a CUDA GPU"):
        flash_attn_kernel("cpu")
    with pytest.raises(ValueError, match=r"^training\.float8 = 'rowwise' needs a CUDA GPU"):
        check_float8("rowwise", "cpu")
    with pytest.raises(ValueError, match=r"expected one of off, tensorwise, rowwise"):
        check_float8("fp8", "cpu")
    check_float8("off", "cpu")  # nothing to check


def test_sdpa_backend_forces_one_kernel_or_none():
    """math leaves SDPA only its math kernel; auto and the non-SDPA flash_attn change nothing."""
    from contextlib import nullcontext

    backends = torch.backends.cuda
    with sdpa_backend("math"):
        assert backends.math_sdp_enabled() and not backends.flash_sdp_enabled()
        assert not backends.mem_efficient_sdp_enabled() and not backends.cudnn_sdp_enabled()
    assert backends.flash_sdp_enabled()  # restored
    assert isinstance(sdpa_backend("auto"), nullcontext) and isinstance(
        sdpa_backend("flash_attn"), nullcontext
    )


def test_residual_dtype_under_autocast():
    """compute: the embedding output is cast to bf16 (what FSDP's bf16 parameters give); float32 keeps the
    residual stream in fp32 as torchtitan's one-GPU path does; the two differ in the last bits."""
    tokens = torch.randint(0, 50, (2, 12))
    dtypes, logits = {}, {}
    for fp32 in (False, True):
        model = tiny()
        model.residual_fp32 = fp32
        first = model.layers["0"]
        handle = first.register_forward_pre_hook(
            lambda m, args, fp32=fp32: dtypes.__setitem__(fp32, args[0].dtype)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits[fp32] = model(tokens).float()
        handle.remove()
    assert dtypes == {False: torch.bfloat16, True: torch.float32}
    assert not torch.equal(logits[False], logits[True])
    torch.testing.assert_close(logits[False], logits[True], rtol=0.05, atol=0.05)
