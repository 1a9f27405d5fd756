"""Masked-token held-out evaluation: the held-out masks (HELDOUT_MASK_SEED) are the same at every evaluated
step, the loss and accuracy are those of the masked positions only, and the most-frequent-token baseline is
computed on exactly those positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_loader import write_stream
from test_model import build, tiny_args

from lmrepro.data.masking import HELDOUT_MASK_SEED, IGNORE_INDEX, MaskingConfig, mask_batch
from lmrepro.data.shards import TokenStream
from lmrepro.eval.loss import masked_heldout_loss, spread_window_starts

SEQ = 16


@pytest.fixture
def stream(tmp_path) -> TokenStream:
    rng = np.random.default_rng(0)
    tokens = rng.choice(np.arange(3, 40), size=1000, p=None)  # ids 0..2 stand for BOS/EOS/mask
    tokens[::50] = 0
    return TokenStream(write_stream(tmp_path, tokens, cuts=[500], vocab_size=64).parent)


def test_masked_eval_matches_a_hand_computation(stream: TokenStream) -> None:
    model = build(tiny_args(causal=False))
    model.eval()
    masking = MaskingConfig(
        mask_ratio=0.3, mask_token_id=2, vocab_size=model.args.vocab_size, never_mask_ids=(0, 1)
    )
    got = masked_heldout_loss(
        model, stream, seq_len=SEQ, max_tokens=10 * SEQ, masking=masking, batch_sequences=3
    )
    starts = spread_window_starts(len(stream), SEQ, 10 * SEQ, context=0)  # spread over the split
    windows = torch.stack([torch.from_numpy(stream.window(s, SEQ)) for s in starts])
    inputs, labels = mask_batch(windows, list(range(10)), HELDOUT_MASK_SEED, masking)
    with torch.no_grad():
        logits = model(inputs).flatten(0, 1)
    flat = labels.flatten()
    sel = flat != IGNORE_INDEX
    assert got["num_tokens"] == int(sel.sum()) and got["num_input_tokens"] == 10 * SEQ
    assert 0.2 < got["num_tokens"] / 160 < 0.4
    assert got["loss"] == pytest.approx(float(F.cross_entropy(logits[sel], flat[sel])), rel=1e-5)
    assert got["accuracy"] == float((logits[sel].argmax(-1) == flat[sel]).float().mean())
    counts = torch.bincount(flat[sel])
    assert got["baseline_accuracy"] == int(counts.max()) / int(sel.sum())
    assert got["baseline_token_id"] == int(counts.argmax()) and got["baseline_token_id"] not in (0, 1)
    # the same masks at every evaluation (another batching, another call)
    again = masked_heldout_loss(model, stream, seq_len=SEQ, max_tokens=10 * SEQ, masking=masking)
    assert again["num_tokens"] == got["num_tokens"] and again["baseline_accuracy"] == got["baseline_accuracy"]
    assert again["loss"] == pytest.approx(got["loss"], rel=1e-6)


def test_pseudo_perplexity_masks_one_token_at_a_time(stream: TokenStream) -> None:
    from lmrepro.eval.loss import pseudo_perplexity

    model = build(tiny_args(causal=False))
    model.eval()
    masking = MaskingConfig(
        mask_ratio=0.3, mask_token_id=2, vocab_size=model.args.vocab_size, never_mask_ids=(0, 1)
    )
    got = pseudo_perplexity(model, stream, seq_len=SEQ, num_tokens=20, masking=masking, batch_sequences=7)
    assert got["num_tokens"] == 20
    window = torch.from_numpy(stream.window(0, SEQ)).clone()
    positions = [p for p in range(SEQ) if int(window[p]) not in (0, 1)]
    nll = []
    for w in range(2):  # 20 maskable positions span the first two windows here
        window = torch.from_numpy(stream.window(w * SEQ, SEQ)).clone()
        for p in [p for p in range(SEQ) if int(window[p]) not in (0, 1)]:
            masked = window.clone()
            masked[p] = 2
            with torch.no_grad():
                nll.append(float(F.cross_entropy(model(masked[None])[0, p][None], window[p][None])))
    assert len(positions) < 20 <= len(nll)
    assert got["pseudo_nll"] == pytest.approx(sum(nll[:20]) / 20, rel=1e-5)
