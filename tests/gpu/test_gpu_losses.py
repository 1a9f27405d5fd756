"""On a CUDA GPU: the fused linear + cross-entropy's GPU path (compiled chunk step, the weight gradient
accumulated in fp32 inside the GEMM) equals the plain loss on materialised logits, in bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmrepro.model import losses

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with the device tool)"),
]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cuda_bf16_matches_materialised_logits(compiled: bool, monkeypatch) -> None:
    monkeypatch.setattr(losses, "_compiled_chunk_step", None)
    if compiled:
        losses.compile_chunk_step()
    torch.manual_seed(0)
    n, dim, vocab = 3000, 256, 5000  # 3 chunks of 1024, the last one short
    hidden = torch.randn(n, dim, device="cuda", requires_grad=True)
    weight = (torch.randn(vocab, dim, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = losses.linear_cross_entropy(hidden, weight, targets, chunk_tokens=1024)
    (loss * 2).backward()
    assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()
    got = loss.detach(), hidden.grad.clone(), weight.grad.clone()

    hidden.grad = weight.grad = None
    logits = hidden.bfloat16() @ weight.bfloat16().t()
    expected = F.cross_entropy(logits.float(), targets)
    (expected * 2).backward()
    torch.testing.assert_close(got[0], expected.detach(), rtol=1e-3, atol=1e-3)
    # bf16 gradients of logits: compare at bf16 precision, relative to the gradients' scale
    for g, e in ((got[1], hidden.grad), (got[2], weight.grad)):
        assert (g - e).abs().max() <= 2e-2 * e.abs().max()


def test_cuda_bf16_weighted_loss_matches_torchs_weighted_mean() -> None:
    """The token-weighted fused loss on the GPU path (bf16 autocast, fp32 weight-gradient GEMM): the
    weighted mean equals cross_entropy(weight=…) on materialised logits, the plain sum beside it."""
    torch.manual_seed(1)
    n, dim, vocab = 3000, 256, 5000
    hidden = torch.randn(n, dim, device="cuda", requires_grad=True)
    weight = (torch.randn(vocab, dim, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(0, vocab, (n,), device="cuda")
    token_weights = torch.rand(vocab, device="cuda") * 10 + 0.1
    w = token_weights[targets]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, plain = losses.weighted_linear_cross_entropy(
            hidden, weight, targets, w, w.sum(), chunk_tokens=1024
        )
    loss.backward()
    got = loss.detach(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = (hidden.bfloat16() @ weight.bfloat16().t()).float()
    expected = F.cross_entropy(logits, targets, weight=token_weights)
    expected.backward()
    torch.testing.assert_close(got[0], expected.detach(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(
        plain, F.cross_entropy(logits.detach(), targets, reduction="sum"), rtol=1e-3, atol=1e-1
    )
    for g, e in ((got[1], hidden.grad), (got[2], weight.grad)):
        assert (g - e).abs().max() <= 2e-2 * e.abs().max()
