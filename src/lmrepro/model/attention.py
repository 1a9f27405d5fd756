"""The attention kernels a model can run: PyTorch's SDPA (its backend chosen by PyTorch or forced) or the
flash-attn package.

``training.attention_backend``: ``auto`` lets SDPA choose (cuDNN attention on Hopper, then FlashAttention-2,
memory-efficient, math); ``flash``, ``efficient``, ``cudnn`` and ``math`` force one SDPA backend (an error
if it cannot run the shape); ``flash_attn`` calls the flash-attn package instead of SDPA: FA-4
(``flash_attn.cute``, the gpt-neuro-arch seed's kernel) where it is installed, else FA-2
(``flash_attn.flash_attn_func``). The package takes ``[batch, seq, heads, head_dim]`` and grouped-query
attention natively, so the model hands it q, k, v before any transpose or k/v repetition; causal and
bidirectional masks alike. It is imported only here, lazily: the package imports without it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

SDPA_BACKENDS = ("auto", "flash", "efficient", "cudnn", "math")
BACKENDS = (*SDPA_BACKENDS, "flash_attn")

# (q [b, s, hq, hd], k [b, s, hkv, hd], v [b, s, hkv, hd], causal) -> [b, s, hq, hd]
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, bool], torch.Tensor]


def sdpa_backend(name: str):
    """A context forcing one SDPA kernel (nothing for ``auto`` or a non-SDPA backend)."""
    if name not in SDPA_BACKENDS or name == "auto":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel(backends[name])


def flash_attn_kernel(device: torch.device | str, key: str = "training.attention_backend") -> AttentionKernel:
    """The flash-attn package's kernel (FA-4 if importable, else FA-2), or a one-line ValueError naming
    ``key`` when it cannot run here (no CUDA device, package not installed)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"{key} = 'flash_attn' needs a CUDA GPU; this run is on {device.type}")
    try:
        from flash_attn.cute import flash_attn_func as fa4

        return _fa4_kernel(fa4)
    except ImportError:
        pass
    try:
        from flash_attn import flash_attn_func as fa2
    except ImportError as e:
        raise ValueError(
            f"{key} = 'flash_attn' needs the flash-attn package (pip install flash-attn-4, or flash-attn for "
            f"FA-2): {e}"
        ) from None
    return lambda q, k, v, causal: fa2(q, k, v, causal=causal)


def _fa4_kernel(fa4) -> AttentionKernel:
    def kernel(q, k, v, causal):
        out = fa4(q, k, v, causal=causal)
        return out[0] if isinstance(out, tuple) else out  # some FA-4 releases also return the logsumexp

    return kernel


def flash_attn_version() -> str | None:
    """Which flash-attn the ``flash_attn`` backend would run ("fa4 <version>", "fa2 <version>"), or None."""
    from importlib.metadata import PackageNotFoundError, version

    for dist, name in (("flash-attn-4", "fa4"), ("flash-attn", "fa2")):
        try:
            return f"{name} {version(dist)}"
        except PackageNotFoundError:
            continue
    return None
