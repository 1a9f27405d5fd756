"""The fused, chunked output projection + cross-entropy equals the plain one: loss and both gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmrepro.model.losses import linear_cross_entropy


@pytest.mark.parametrize("chunk_tokens", [7, 32, 1000])  # not dividing, dividing, one chunk
def test_matches_materialised_logits(chunk_tokens: int) -> None:
    torch.manual_seed(0)
    n, dim, vocab = 96, 16, 50
    hidden = torch.randn(n, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))

    loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk_tokens)
    (loss * 3).backward()  # a non-unit upstream gradient is applied to both stored gradients
    got = loss.detach(), hidden.grad.clone(), weight.grad.clone()

    hidden.grad = weight.grad = None
    expected_loss = F.cross_entropy(hidden @ weight.t(), targets)
    (expected_loss * 3).backward()
    torch.testing.assert_close(got[0], expected_loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], weight.grad, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_stays_close_to_fp32() -> None:
    torch.manual_seed(1)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = (torch.randn(100, 32) * 0.1).requires_grad_()
    targets = torch.randint(0, 100, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=16)
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    reference = F.cross_entropy(hidden.detach() @ weight.detach().t(), targets)
    assert float(loss) == pytest.approx(float(reference), rel=2e-2)


@pytest.mark.parametrize("chunk_tokens", [7, 1000])
def test_ignored_targets_and_a_given_normaliser(chunk_tokens: int) -> None:
    """IGNORE_INDEX targets (the unmasked positions of an MLM batch) add no loss and no gradient; with a
    normaliser the result is the labelled sum divided by it (the global masked-token count)."""
    torch.manual_seed(2)
    n, dim, vocab = 50, 8, 30
    hidden = torch.randn(n, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    targets[torch.rand(n) < 0.7] = -100
    assert 0 < int((targets != -100).sum()) < n

    loss = linear_cross_entropy(hidden, weight, targets, chunk_tokens=chunk_tokens, normaliser=123.0)
    loss.backward()
    got = loss.detach(), hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    expected = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100, reduction="sum") / 123.0
    expected.backward()
    torch.testing.assert_close(got[0], expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[2], weight.grad, rtol=1e-4, atol=1e-6)
    assert torch.all(got[1][targets == -100] == 0)  # an ignored position's hidden state gets nothing


def test_all_targets_ignored_gives_zero() -> None:
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(9, 4, requires_grad=True)
    loss = linear_cross_entropy(hidden, weight, torch.full((5,), -100), normaliser=1.0)
    loss.backward()
    assert float(loss) == 0.0 and not hidden.grad.any() and not weight.grad.any()
