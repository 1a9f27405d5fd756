"""Masked-LM core (issue 14): masks, their determinism, the global-batch loss, bidirectional attention."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from lmrepro.data.masking import (
    HELDOUT_MASK_SEED,
    IGNORE_INDEX,
    MaskingConfig,
    default_never_mask_ids,
    mask_batch,
    mask_window,
    resolve_mask_token,
)
from lmrepro.model.flavors import FLAVORS
from lmrepro.model.llama import Transformer
from lmrepro.model.masked_loss import cross_entropy_sum, global_normaliser

BOS, EOS, MASK, VOCAB = 0, 1, 5, 64


def _cfg(**kw) -> MaskingConfig:
    base = dict(mask_ratio=0.3, mask_token_id=MASK, vocab_size=VOCAB, never_mask_ids=(BOS, EOS))
    return MaskingConfig(**{**base, **kw})


def _positions(labels: torch.Tensor) -> list[int]:
    return (labels != IGNORE_INDEX).nonzero().flatten().tolist()


def _corpus(n_rows: int, seq: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(2, vocab, (n_rows, seq), generator=g)
    toks[:, 0], toks[:, -1] = BOS, EOS  # every window starts with BOS and ends with EOS
    return toks


# --- counts and positions for a fixed seed -----------------------------------------------------------------


def test_golden_positions_fixed_seed() -> None:
    tokens = torch.arange(2, 34)
    inputs, labels = mask_window(tokens, 1234, 7, _cfg())
    assert _positions(labels) == [8, 9, 10, 13, 22, 31]
    _, labels_exact = mask_window(tokens, 1234, 7, _cfg(selection="exact"))
    # round(0.3 * 32) = 10 positions: the bernoulli ones plus the next-smallest draws.
    assert _positions(labels_exact) == [1, 8, 9, 10, 11, 13, 22, 25, 27, 31]
    sel = labels != IGNORE_INDEX
    assert torch.equal(labels[sel], tokens[sel])  # unshifted: the label is the token at that position
    assert (inputs[sel] == MASK).all() and torch.equal(inputs[~sel], tokens[~sel])  # all_mask, no 80/10/10


@pytest.mark.parametrize("seq", [10, 33, 128, 1000])
def test_exact_mode_count_is_exact(seq: int) -> None:
    cfg = _cfg(selection="exact", mask_ratio=0.15)
    toks = _corpus(20, seq)
    _, labels = mask_batch(toks, range(20), 3, cfg)
    maskable = seq - 2
    expected = int(np.floor(0.15 * maskable + 0.5))
    assert ((labels != IGNORE_INDEX).sum(dim=1) == expected).all()


def test_never_masked_ids_never_selected() -> None:
    toks = _corpus(200, 256)
    toks[:, 100:110] = 2  # a padding run in the middle
    cfg = _cfg(never_mask_ids=default_never_mask_ids(BOS, EOS, pad_id=2), mask_ratio=0.9)
    for c in (
        cfg,
        dataclasses.replace(cfg, selection="exact"),
        dataclasses.replace(cfg, replacement="80_10_10"),
    ):
        inputs, labels = mask_batch(toks, range(200), 11, c)
        special = torch.isin(toks, torch.tensor([BOS, EOS, 2]))
        assert (labels[special] == IGNORE_INDEX).all()
        assert torch.equal(inputs[special], toks[special])
        if c.replacement == "80_10_10":  # random replacements are never special nor the mask token
            changed = (inputs != toks) & (inputs != MASK)
            assert changed.any() and not torch.isin(inputs[changed], torch.tensor([BOS, EOS, 2, MASK])).any()


# --- rates over 1M tokens -----------------------------------------------------------------------------------


def test_bernoulli_rate_over_1m_tokens() -> None:
    toks = torch.randint(2, VOCAB, (1000, 1000))
    _, labels = mask_batch(toks, range(1000), 42, _cfg())
    rate = (labels != IGNORE_INDEX).float().mean().item()
    assert abs(rate - 0.3) < 0.01


def test_80_10_10_proportions_over_1m_tokens() -> None:
    vocab = 128_256  # Llama-3's, with its real mask token
    cfg = MaskingConfig(0.3, 128_105, vocab, (128_000, 128_001), replacement="80_10_10")
    toks = torch.randint(0, 128_000, (1000, 1000))
    inputs, labels = mask_batch(toks, range(1000), 42, cfg)
    sel = labels != IGNORE_INDEX
    n = sel.sum().item()
    assert abs(n / toks.numel() - 0.3) < 0.01
    to_mask = (inputs[sel] == cfg.mask_token_id).sum().item() / n
    kept = (inputs[sel] == toks[sel]).sum().item() / n
    to_random = 1.0 - to_mask - kept
    # A random draw may equal the original token (1 in ~128k), which counts as "kept" here.
    assert abs(to_mask - 0.8) < 0.01 and abs(to_random - 0.1) < 0.01 and abs(kept - 0.1) < 0.01
    assert torch.equal(inputs[~sel], toks[~sel])
    rand_ids = inputs[sel & (inputs != toks) & (inputs != cfg.mask_token_id)]
    assert rand_ids.max() >= 128_002  # uniform over the whole vocabulary, not just the data's range
    assert not torch.isin(rand_ids, torch.tensor([128_000, 128_001, 128_105])).any()


# --- determinism -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("replacement", ["all_mask", "80_10_10"])
def test_masks_depend_only_on_seed_and_global_index(replacement: str) -> None:
    cfg = _cfg(replacement=replacement)
    toks = _corpus(16, 64)
    ref_in, ref_lab = mask_batch(toks, range(16), 7, cfg)
    # Resume at sample 10: only the later samples are masked, in a fresh process state.
    np.random.seed(123)
    torch.manual_seed(123)
    res_in, res_lab = mask_batch(toks[10:], range(10, 16), 7, cfg)
    assert torch.equal(res_in, ref_in[10:]) and torch.equal(res_lab, ref_lab[10:])
    # Another dp size (4 ranks, strided) and another batch order/composition.
    for rank in range(4):
        idx = list(range(rank, 16, 4))[::-1]
        r_in, r_lab = mask_batch(toks[idx], idx, 7, cfg)
        assert torch.equal(r_in, ref_in[idx]) and torch.equal(r_lab, ref_lab[idx])
    # Two TP ranks of one dp group mask the same micro-batch identically.
    tp = [mask_batch(toks[4:8], range(4, 8), 7, cfg) for _ in range(2)]
    assert torch.equal(tp[0][0], tp[1][0]) and torch.equal(tp[0][1], tp[1][1])
    # And the seed and the index both matter.
    assert not torch.equal(mask_batch(toks, range(16), 8, cfg)[1], ref_lab)
    assert not torch.equal(mask_batch(toks, range(1, 17), 7, cfg)[1], ref_lab)


def test_global_rng_untouched_and_heldout_masks_fixed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    toks = _corpus(4, 32)
    a = mask_batch(toks, range(4), HELDOUT_MASK_SEED, _cfg())
    assert np.array_equal(np.random.get_state()[1], np_state) and torch.equal(
        torch.get_rng_state(), torch_state
    )
    b = mask_batch(toks, range(4), HELDOUT_MASK_SEED, _cfg())  # the same masks at every evaluated step
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, float("nan"), True])
def test_bad_ratio_names_the_key(ratio: float) -> None:
    with pytest.raises(ValueError, match=r"training\.mlm\.mask_ratio"):
        _cfg(mask_ratio=ratio)


def test_resolve_mask_token() -> None:
    vocab = {"<|begin_of_text|>": 128_000, "<|reserved_special_token_100|>": 128_105, "a": 3}
    assert resolve_mask_token("<|reserved_special_token_100|>", vocab) == 128_105
    assert resolve_mask_token(128_105, vocab) == 128_105
    assert resolve_mask_token("<|reserved_special_token_100|>", vocab.get) == 128_105  # None when unknown
    for bad, lookup in [
        ("<|nope|>", vocab),
        ("<|nope|>", vocab.get),
        ("<|nope|>", vocab.__getitem__),
        (7, vocab),
    ]:
        with pytest.raises(ValueError, match=r"training\.mlm\.mask_token.*nope|training\.mlm\.mask_token.*7"):
            resolve_mask_token(bad, lookup)
    with pytest.raises(ValueError, match=r"training\.mlm\.mask_token"):
        _cfg(mask_token_id=VOCAB)


# --- global-batch normalisation ----------------------------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.out = nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(x)))


def _step(model: nn.Module, micro: list[tuple[torch.Tensor, torch.Tensor]], global_norm: torch.Tensor):
    """One rank's step under the contract: backward each micro-batch on loss_sum / global normaliser."""
    model.zero_grad()
    total = torch.zeros(())
    for inputs, labels in micro:
        loss_sum, _ = cross_entropy_sum(model(inputs), labels)
        (loss_sum / global_norm).backward()
        total += loss_sum.detach()
    return total, [p.grad.clone() for p in model.parameters()]


def test_gas_and_dp_match_one_big_batch() -> None:
    torch.manual_seed(0)
    model = _Tiny()
    toks = _corpus(8, 24)
    inputs, labels = mask_batch(toks, range(8), 5, _cfg(mask_ratio=0.2))
    counts = (labels != IGNORE_INDEX).sum(dim=1)
    assert len(set(counts.tolist())) > 1  # uneven mask counts, so a mean of means would differ

    n_all = global_normaliser(cross_entropy_sum(model(inputs), labels)[1])
    loss1, grads1 = _step(model, [(inputs, labels)], n_all)
    mbs = [(inputs[i : i + 2], labels[i : i + 2]) for i in range(0, 8, 2)]
    n4 = global_normaliser(sum(cross_entropy_sum(model(x), y)[1] for x, y in mbs))
    loss4, grads4 = _step(model, mbs, n4)
    torch.testing.assert_close(loss4 / n4, loss1 / n_all, rtol=0, atol=1e-6)
    for g1, g4 in zip(grads1, grads4, strict=True):
        torch.testing.assert_close(g4, g1, rtol=0, atol=1e-6)

    # Two simulated dp ranks, 2 micro-batches each: normaliser and gradients SUMMED over ranks.
    ranks = [mbs[:2], mbs[2:]]
    n_dp = sum(sum(cross_entropy_sum(model(x), y)[1] for x, y in r) for r in ranks)  # the all-reduce
    outs = [_step(model, r, n_dp) for r in ranks]
    torch.testing.assert_close(sum(o[0] for o in outs) / n_dp, loss1 / n_all, rtol=0, atol=1e-6)
    for i, g1 in enumerate(grads1):
        torch.testing.assert_close(outs[0][1][i] + outs[1][1][i], g1, rtol=0, atol=1e-6)

    # The mean of micro-batch means is NOT the same loss (what this contract avoids).
    mean_of_means = (
        sum(cross_entropy_sum(model(x), y)[0] / cross_entropy_sum(model(x), y)[1] for x, y in mbs) / 4
    )
    assert abs(mean_of_means.item() - (loss1 / n_all).item()) > 1e-4


def test_cross_entropy_sum_weights_and_ignore() -> None:
    logits = torch.randn(2, 3, 7)
    labels = torch.tensor([[1, IGNORE_INDEX, 2], [IGNORE_INDEX, IGNORE_INDEX, 6]])
    loss_sum, n = cross_entropy_sum(logits, labels)
    assert n.item() == 3
    ref = nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), reduction="sum")
    torch.testing.assert_close(loss_sum, ref)
    w = torch.tensor([[2.0, 9.0, 1.0], [9.0, 9.0, 0.5]])
    loss_w, n_w = cross_entropy_sum(logits, labels, w)
    assert n_w.item() == pytest.approx(3.5)  # weights at unlabelled positions do not count
    ce = nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), reduction="none")
    torch.testing.assert_close(loss_w, (ce * torch.tensor([2.0, 0, 1.0, 0, 0, 0.5])).sum())


# --- bidirectional attention -------------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_later_token_changes_earlier_output_only_when_bidirectional(causal: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(FLAVORS["debug"], vocab_size=VOCAB, causal=causal)).eval()
    toks = torch.randint(2, VOCAB, (1, 16))
    changed = toks.clone()
    changed[0, 12] = (toks[0, 12] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(toks), model(changed)
    earlier_diff = (a[0, :12] - b[0, :12]).abs().max().item()
    if causal:
        assert earlier_diff < 1e-6
    else:
        assert earlier_diff > 1e-4
    assert (a[0, 12:] - b[0, 12:]).abs().max().item() > 1e-4  # the changed position and after always move
