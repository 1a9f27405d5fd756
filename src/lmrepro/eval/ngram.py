"""An n-gram baseline (gpt-neuro's ngram.py): add-one (Laplace) smoothed n-gram counts of the training
shards, scored in nats per token on a held-out split.

P(w | c) = (count(c, w) + 1) / (count(c) + V) for the n - 1 previous tokens c. Counting is vectorised: each
n-gram of the stream becomes one int64 key (base-V digits), and the counts are one np.bincount (when V^n is
small, e.g. bytes up to n = 3) or one np.unique (a sort) each for the n-grams and their contexts; scoring
looks the held-out n-grams up with np.searchsorted. The seed's loop over
Python dicts takes days on the rodent pile; benchmarks/ngram/ measures both.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np


def _keys(tokens: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """The key of every n-gram of `tokens` (len - n + 1 of them): sum_j tokens[i + j] · V^(n-1-j)."""
    if vocab_size ** max(n, 1) >= 2**63:
        raise ValueError(
            f"n = {n} with a vocabulary of {vocab_size}: n-gram keys overflow int64; use a smaller n"
        )
    t = np.asarray(tokens, dtype=np.int64)
    count = len(t) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.zeros(count, dtype=np.int64)
    for j in range(n):
        keys = keys * vocab_size + t[j : j + count]
    return keys


@dataclass
class NGramModel:
    n: int
    vocab_size: int
    gram_keys: np.ndarray  # sorted unique n-gram keys
    gram_counts: np.ndarray
    context_keys: np.ndarray  # sorted unique (n-1)-gram keys that have a next token
    context_counts: np.ndarray
    num_tokens: int
    fit_seconds: float

    def log_probs(self, tokens: np.ndarray) -> np.ndarray:
        """ln P(token | the n - 1 before it) of tokens[n-1:], Laplace-smoothed."""
        grams = _lookup(self.gram_keys, self.gram_counts, _keys(tokens, self.n, self.vocab_size))
        if self.n > 1:
            contexts = _keys(tokens[:-1], self.n - 1, self.vocab_size)
            context = _lookup(self.context_keys, self.context_counts, contexts)
        else:
            context = np.full(len(grams), self.num_tokens, dtype=np.int64)
        return np.log(grams + 1.0) - np.log(context + float(self.vocab_size))


DENSE_KEYS = 1 << 25  # up to this many possible keys (e.g. 256^3), counts are one O(N) np.bincount


def _count(keys: np.ndarray, n: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct keys, their counts): a dense bincount when V^n is small, else a sort (np.unique)."""
    space = vocab_size**n
    if space <= DENSE_KEYS:
        counts = np.bincount(keys, minlength=space)
        present = np.flatnonzero(counts)
        return present, counts[present]
    return np.unique(keys, return_counts=True)


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(len(query), dtype=np.int64)
    at = np.searchsorted(keys, query).clip(0, len(keys) - 1)
    return np.where(keys[at] == query, counts[at], 0)


def fit_ngram(streams: np.ndarray | list[np.ndarray], n: int, vocab_size: int) -> NGramModel:
    """Counts of every n-gram and of its (n-1)-token context in one token stream or several (a mixture's
    sources: their counts are pooled; no n-gram crosses from one stream into the next)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    streams = streams if isinstance(streams, list) else [streams]
    started = time.perf_counter()
    grams = np.concatenate([_keys(s, n, vocab_size) for s in streams])
    gram_keys, gram_counts = _count(grams, n, vocab_size)
    del grams
    if n > 1:
        # contexts that are followed by a token: the first len - n + 1 (n-1)-grams of each stream
        contexts = np.concatenate([_keys(s[:-1], n - 1, vocab_size) for s in streams])
        context_keys, context_counts = _count(contexts, n - 1, vocab_size)
    else:
        context_keys = context_counts = np.zeros(0, dtype=np.int64)
    num_tokens = sum(len(s) for s in streams)
    seconds = time.perf_counter() - started
    return NGramModel(
        n, vocab_size, gram_keys, gram_counts, context_keys, context_counts, num_tokens, seconds
    )


def fit_ngram_loop(tokens, n: int, vocab_size: int) -> dict:
    """The plain Python loop (the seed's way, dict counting), for the benchmark's baseline only."""
    grams: dict[tuple, int] = {}
    contexts: dict[tuple, int] = {}
    t = [int(x) for x in tokens]
    for i in range(len(t) - n + 1):
        gram = tuple(t[i : i + n])
        grams[gram] = grams.get(gram, 0) + 1
        contexts[gram[:-1]] = contexts.get(gram[:-1], 0) + 1
    return {"grams": grams, "contexts": contexts}


def ngram_loss(model: NGramModel, tokens: np.ndarray, targets: slice) -> dict:
    """Mean negative log-likelihood (nats/token) of tokens[targets] (each given its n - 1 predecessors in
    `tokens`; targets before position n - 1 have too short a context and are not scored)."""
    start = max(targets.start or 0, model.n - 1)
    stop = min(targets.stop if targets.stop is not None else len(tokens), len(tokens))
    window = tokens[start - model.n + 1 : stop]
    nll = -model.log_probs(window)
    loss = float(nll.mean()) if len(nll) else math.nan
    return {"loss": loss, "perplexity": math.exp(loss), "num_tokens": len(nll)}


def ngram_windows_loss(model: NGramModel, stream, starts: list[int], seq_len: int) -> dict:
    """:func:`ngram_loss` over the targets [s + 1, s + seq_len] of each window start s of a token stream
    (lmrepro.data.shards.TokenStream), each target given its n - 1 predecessors in the stream."""
    total, count = 0.0, 0
    for start in starts:
        first = max(start + 1 - (model.n - 1), 0)
        tokens = stream.window(first, start + seq_len + 1 - first)
        part = ngram_loss(model, tokens, slice(start + 1 - first, None))
        if part["num_tokens"]:
            total += part["loss"] * part["num_tokens"]
            count += part["num_tokens"]
    loss = total / count if count else math.nan
    return {"loss": loss, "perplexity": math.exp(loss), "num_tokens": count}
