"""Held-out loss and perplexity of our own model over a tokenized split."""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from lmrepro.data.shards import TokenStream
from lmrepro.model.llama import Transformer

log = logging.getLogger(__name__)


def scored_windows(stream: TokenStream, *, seq_len: int, max_tokens: int) -> int:
    """How many consecutive windows of seq_len targets a loss eval scores (the n-gram baseline too)."""
    num_windows = min((len(stream) - 1) // seq_len, max(max_tokens // seq_len, 1))
    if num_windows < 1:
        raise ValueError(
            f"{stream.index_path}: too few tokens ({len(stream)}) for one window of {seq_len + 1}"
        )
    return num_windows


@torch.no_grad()
def heldout_loss(
    model: Transformer,
    stream: TokenStream,
    *,
    seq_len: int,
    max_tokens: int,
    batch_sequences: int = 8,
    log_every_s: float = 10.0,
    token_weights: torch.Tensor | None = None,
) -> dict:
    """Mean next-token loss over the first `max_tokens` targets of the stream, in order.

    Windows are consecutive and deterministic, so every checkpoint of a run is scored on the same tokens.
    With `token_weights` (the run's training.token_weights) also the weighted loss over the same targets:
    sum(w[target] · ce) / sum(w[target]) over all of them, the training loss's normalisation.
    """
    if stream.vocab_size > model.args.vocab_size:
        raise ValueError(
            f"{stream.index_path}: vocab_size {stream.vocab_size} exceeds the model's {model.args.vocab_size}"
        )
    num_windows = scored_windows(stream, seq_len=seq_len, max_tokens=max_tokens)
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    weighted_loss, weight_sum = 0.0, 0.0
    weights = token_weights.to(device) if token_weights is not None else None
    last_log = time.monotonic()
    for first in range(0, num_windows, batch_sequences):
        ids = range(first, min(first + batch_sequences, num_windows))
        windows = torch.stack([torch.from_numpy(stream.window(w * seq_len, seq_len + 1)) for w in ids]).to(
            device
        )
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
    if weights is not None:
        result["weighted_loss"] = weighted_loss / weight_sum if weight_sum > 0 else math.nan
    return result
