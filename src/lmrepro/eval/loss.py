"""Held-out loss and perplexity of our own model over a tokenized split; masked-token loss and accuracy of
a masked language model."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from lmrepro.data.masking import HELDOUT_MASK_SEED, IGNORE_INDEX, MaskingConfig, mask_batch
from lmrepro.data.shards import TokenStream
from lmrepro.model.llama import Transformer

log = logging.getLogger(__name__)


def spread_window_starts(
    num_tokens: int, seq_len: int, max_tokens: int | None, *, multiple_of: int = 1, context: int = 1
) -> list[int]:
    """Start offsets of the scored windows of ``seq_len + context`` tokens, spread evenly over the stream.

    ``max_tokens // seq_len`` windows (at least ``multiple_of``, a multiple of it), or every window the
    stream holds when ``max_tokens`` is None or at least the split: then they are consecutive and cover it
    all. The first starts at 0, the last ends at the stream's end; they never overlap. Every checkpoint of
    a run (and in-loop validation, the n-gram baseline) scores the same windows.
    """
    available = (num_tokens - context) // seq_len
    wanted = available if max_tokens is None else max(max_tokens // seq_len, multiple_of)
    count = min(available, wanted) // multiple_of * multiple_of
    if count < 1:
        raise ValueError(
            f"the split has {num_tokens} tokens, too few for {multiple_of} window(s) of {seq_len + context}"
        )
    if count == available:
        return [w * seq_len for w in range(count)]
    last_start = num_tokens - seq_len - context
    return [int(x) for x in np.linspace(0, last_start, count).round()]


def scored_windows(stream: TokenStream, *, seq_len: int, max_tokens: int | None) -> list[int]:
    """The window starts a loss eval scores (seq_len + 1 tokens each: seq_len targets), its n-gram too."""
    try:
        return spread_window_starts(len(stream), seq_len, max_tokens)
    except ValueError as e:
        raise ValueError(f"{stream.index_path}: {e}") from None


def scored_documents(stream: TokenStream, starts: list[int], seq_len: int, context: int = 1) -> int | None:
    """How many documents have at least one scored target (targets: tokens [s + context, s + seq_len +
    context) of each window), counted by their BOS; None when the stream has no BOS (spike rows)."""
    if stream.bos_id is None:
        return None
    documents, seen_bos, last_doc, position = 0, 0, -2, 0  # doc -1: text before the first BOS
    for start in starts:  # in order, never overlapping: one pass over the stream
        first = start + context
        seen_bos += int(np.count_nonzero(stream.window(position, first - position) == stream.bos_id))
        targets = stream.window(first, seq_len)
        doc_ids = seen_bos - 1 + np.cumsum(targets == stream.bos_id)  # -1: text before the first BOS
        low, high = max(int(doc_ids[0]), last_doc + 1), int(doc_ids[-1])
        documents += max(high - low + 1, 0)
        last_doc = max(last_doc, high)
        seen_bos, position = int(doc_ids[-1]) + 1, first + seq_len
    return documents


@torch.no_grad()
def heldout_loss(
    model: Transformer,
    stream: TokenStream,
    *,
    seq_len: int,
    max_tokens: int | None,
    batch_sequences: int = 8,
    log_every_s: float = 10.0,
    token_weights: torch.Tensor | None = None,
) -> dict:
    """Mean next-token loss over about `max_tokens` targets in windows spread evenly over the stream (all
    of it when None or at least the split: :func:`spread_window_starts`).

    The windows are deterministic, so every checkpoint of a run is scored on the same tokens.
    With `token_weights` (the run's training.token_weights) also the weighted loss over the same targets:
    sum(w[target] · ce) / sum(w[target]) over all of them, the training loss's normalisation.
    """
    if stream.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"{stream.index_path}: vocab_size {stream.vocab_size} exceeds the model's {model.args.vocab_size}"
        )
    starts = scored_windows(stream, seq_len=seq_len, max_tokens=max_tokens)
    num_windows = len(starts)
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    weighted_loss, weight_sum = 0.0, 0.0
    weights = token_weights.to(device) if token_weights is not None else None
    last_log = time.monotonic()
    for first in range(0, num_windows, batch_sequences):
        ids = range(first, min(first + batch_sequences, num_windows))
        windows = torch.stack([torch.from_numpy(stream.window(starts[w], seq_len + 1)) for w in ids])
        windows = windows.to(device)
        logits = model(windows[:, :-1])
        targets = windows[:, 1:].flatten()
        if weights is None:
            total_loss += float(F.cross_entropy(logits.flatten(0, 1).float(), targets, reduction="sum"))
        else:
            ce = F.cross_entropy(logits.flatten(0, 1).float(), targets, reduction="none")
            total_loss += float(ce.sum())
            weighted_loss += float((weights[targets] * ce).sum())
            weight_sum += float(weights[targets].sum())
        total_tokens += windows[:, 1:].numel()
        if time.monotonic() - last_log > log_every_s:
            log.info("held-out loss: %d / %d windows", first + len(ids), num_windows)
            last_log = time.monotonic()
    mean = total_loss / total_tokens
    result = {"loss": mean, "perplexity": math.exp(mean), "num_tokens": total_tokens}
    result |= {"num_windows": num_windows, "num_documents": scored_documents(stream, starts, seq_len)}
    if weights is not None:
        result["weighted_loss"] = weighted_loss / weight_sum if weight_sum > 0 else math.nan
    return result


@torch.no_grad()
def masked_heldout_loss(
    model: Transformer,
    stream: TokenStream,
    *,
    seq_len: int,
    max_tokens: int | None,
    masking: MaskingConfig,
    batch_sequences: int = 8,
) -> dict:
    """Masked-token loss and accuracy over windows of seq_len tokens spread evenly over the stream (about
    `max_tokens` of them, all when None or at least the split).

    Window w is masked as global sample w with HELDOUT_MASK_SEED, whatever the run's seed, so every
    checkpoint (and every run with the same masking settings) is scored on the same masked positions.
    ``baseline_accuracy`` is the accuracy of always predicting the most frequent token of those positions
    (an upper bound for any constant guess): the bar a model must clear to use the context at all.
    """
    if stream.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"{stream.index_path}: vocab_size {stream.vocab_size} exceeds the model's {model.args.vocab_size}"
        )
    try:
        starts = spread_window_starts(len(stream), seq_len, max_tokens, context=0)
    except ValueError as e:
        raise ValueError(f"{stream.index_path}: {e}") from None
    num_windows = len(starts)
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    label_counts = torch.zeros(model.args.vocab_size, dtype=torch.int64)
    for first in range(0, num_windows, batch_sequences):
        ids = list(range(first, min(first + batch_sequences, num_windows)))
        windows = torch.stack([torch.from_numpy(stream.window(starts[w], seq_len)) for w in ids])
        inputs, labels = mask_batch(windows, ids, HELDOUT_MASK_SEED, masking)
        logits = model(inputs.to(device)).flatten(0, 1).float()
        flat = labels.flatten().to(device)
        total_loss += float(F.cross_entropy(logits, flat, ignore_index=IGNORE_INDEX, reduction="sum"))
        masked = flat != IGNORE_INDEX
        correct += int((logits[masked].argmax(-1) == flat[masked]).sum())
        label_counts += torch.bincount(flat[masked].cpu(), minlength=model.args.vocab_size)
    num_masked = int(label_counts.sum())
    if num_masked == 0:
        raise ValueError(f"{stream.index_path}: no token was masked in {num_windows} windows")
    return {
        "loss": total_loss / num_masked,
        "accuracy": correct / num_masked,
        "baseline_accuracy": int(label_counts.max()) / num_masked,
        "baseline_token_id": int(label_counts.argmax()),
        "num_tokens": num_masked,
        "num_input_tokens": num_windows * seq_len,
        "num_windows": num_windows,
        "num_documents": scored_documents(stream, starts, seq_len, context=0),
    }


@torch.no_grad()
def pseudo_perplexity(
    model: Transformer,
    stream: TokenStream,
    *,
    seq_len: int,
    num_tokens: int,
    masking: MaskingConfig,
    batch_sequences: int = 16,
) -> dict:
    """Pseudo-perplexity (Salazar et al. 2020) of a masked LM over a small sample: exp of the mean of
    -log p(token | its window with that one token masked), over the first `num_tokens` maskable positions
    of the stream's consecutive windows of seq_len tokens. No randomness: every checkpoint scores the same
    positions. One forward per scored token (batched), hence a small sample.
    """
    never = torch.tensor(masking.never_mask_ids, dtype=torch.int64)
    device = next(model.parameters()).device
    positions: list[tuple[int, int]] = []  # (window, position in it)
    for w in range(len(stream) // seq_len):
        window = torch.from_numpy(stream.window(w * seq_len, seq_len))
        positions += [(w, int(p)) for p in torch.nonzero(~torch.isin(window, never)).flatten()]
        if len(positions) >= num_tokens:
            break
    positions = positions[:num_tokens]
    if not positions:
        raise ValueError(f"{stream.index_path}: no maskable token for pseudo-perplexity")
    total = 0.0
    for first in range(0, len(positions), batch_sequences):
        chunk = positions[first : first + batch_sequences]
        rows = torch.stack([torch.from_numpy(stream.window(w * seq_len, seq_len)) for w, _ in chunk])
        at = torch.tensor([p for _, p in chunk])
        targets = rows[torch.arange(len(chunk)), at].clone()
        rows[torch.arange(len(chunk)), at] = masking.mask_token_id
        logits = model(rows.to(device))[torch.arange(len(chunk)), at.to(device)].float()  # [n, vocab]
        total += float(F.cross_entropy(logits, targets.to(device), reduction="sum"))
    mean = total / len(positions)
    return {"pseudo_perplexity": math.exp(mean), "pseudo_nll": mean, "num_tokens": len(positions)}
