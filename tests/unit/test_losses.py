"""The fused, chunked output projection + cross-entropy equals the plain one: loss and both gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lmrepro.model.losses import linear_cross_entropy, load_token_weights, weighted_linear_cross_entropy


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


# --------------------------------------------------------------------------- token-weighted cross-entropy


def _weighted_case(seed: int = 0):
    torch.manual_seed(seed)
    n, dim, vocab = 64, 16, 40
    hidden = torch.randn(n, dim, requires_grad=True)
    weight = torch.randn(vocab, dim, requires_grad=True)
    targets = torch.randint(0, vocab, (n,))
    token_weights = torch.rand(vocab) * 10 + 0.1
    return hidden, weight, targets, token_weights


def test_weighted_loss_is_torchs_weighted_mean_over_the_batch() -> None:
    hidden, weight, targets, token_weights = _weighted_case()
    w = token_weights[targets]
    loss, plain = weighted_linear_cross_entropy(hidden, weight, targets, w, float(w.sum()), chunk_tokens=9)
    loss.backward()
    got = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = F.cross_entropy(hidden @ weight.t(), targets, weight=token_weights)  # divides by sum(w[t])
    reference.backward()
    torch.testing.assert_close(loss.detach(), reference.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[0], hidden.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got[1], weight.grad, rtol=1e-4, atol=1e-6)
    unweighted = F.cross_entropy(hidden.detach() @ weight.detach().t(), targets, reduction="sum")
    torch.testing.assert_close(plain, unweighted, rtol=1e-5, atol=1e-5)
    assert not plain.requires_grad


def _step(hidden, weight, targets, token_weights, parts: int, dp: int):
    """One optimizer step's loss and gradients under the trainer's contract: the normaliser is the weight
    sum of the GLOBAL batch; each of dp ranks runs `parts` micro-batches; FSDP averages the ranks'
    gradients, so each rank backpropagates its loss share times dp."""
    normaliser = float(token_weights[targets].sum())
    grads, loss = [torch.zeros_like(hidden), torch.zeros_like(weight)], torch.zeros(())
    for rank_rows in torch.arange(len(targets)).chunk(dp):
        rank_grads = [torch.zeros_like(hidden), torch.zeros_like(weight)]
        for rows in rank_rows.chunk(parts):
            h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
            share, _ = weighted_linear_cross_entropy(
                h[rows], w, targets[rows], token_weights[targets[rows]], normaliser, chunk_tokens=5
            )
            (share * dp).backward()
            rank_grads[0] += h.grad
            rank_grads[1] += w.grad
            loss += share.detach()
        grads = [g + r / dp for g, r in zip(grads, rank_grads, strict=True)]  # the mean over ranks
    return loss, grads


def test_weighted_loss_is_the_same_for_4_micro_batches_and_1_and_for_2_ranks_and_1() -> None:
    hidden, weight, targets, token_weights = _weighted_case(3)
    one = _step(hidden, weight, targets, token_weights, parts=1, dp=1)
    for parts, dp in ((4, 1), (1, 2), (2, 2)):
        got = _step(hidden, weight, targets, token_weights, parts=parts, dp=dp)
        torch.testing.assert_close(got[0], one[0], rtol=1e-6, atol=1e-6)
        for a, b in zip(got[1], one[1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # torch's weighted mean of micro-batch means is not split-invariant: what this contract avoids
    means = [
        F.cross_entropy(hidden.detach()[r] @ weight.detach().t(), targets[r], weight=token_weights)
        for r in torch.arange(len(targets)).chunk(4)
    ]
    assert abs(float(sum(means) / 4) - float(one[0])) > 1e-4


def test_load_token_weights_checks_length_dtype_and_values(tmp_path) -> None:
    good = tmp_path / "w.pt"
    torch.save(torch.ones(8), good)
    assert load_token_weights(good, 8).shape == (8,)
    cases = {
        "long.pt": (torch.ones(9), r"long.pt: shape \(9,\), expected a 1-D float tensor of length 8"),
        "int.pt": (torch.ones(8, dtype=torch.int64), r"int.pt: dtype torch.int64, expected a 1-D float"),
        "dict.pt": ({"w": torch.ones(8)}, r"dict.pt: holds a dict, expected a 1-D float tensor"),
        "neg.pt": (-torch.ones(8), r"neg.pt: weights must be finite and >= 0"),
    }
    for name, (value, message) in cases.items():
        torch.save(value, tmp_path / name)
        with pytest.raises(ValueError, match=message):
            load_token_weights(tmp_path / name, 8)
    (tmp_path / "junk.pt").write_bytes(b"not a tensor")
    with pytest.raises(ValueError, match="junk.pt: not a tensor saved with torch.save"):
        load_token_weights(tmp_path / "junk.pt", 8)
    with pytest.raises(FileNotFoundError, match="training.token_weights: .*missing.pt does not exist"):
        load_token_weights(tmp_path / "missing.pt", 8)
