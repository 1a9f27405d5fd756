"""Data mixtures: which source each global sample comes from, as a pure function of (seed, sample index).

Weights are token fractions. Every sample is one window of seq_len + 1 tokens, so a source's token share
is its share of samples, and the schedule below gives each source round(n · weight) of the first n
samples up to a small constant (at most the depth of the tree below, i.e. log2(sources) + 1 samples).

The schedule is a binary tree over the sources. A node that has received m samples sends the next one to
its left subtree iff floor((m + 1)·wl/w + φ) > floor(m·wl/w + φ), where wl/w is the left subtree's share
of the node's weight and φ a phase drawn from the seed (a Beatty / stride sequence). The number of
samples a source received among the first n is therefore a closed form evaluated node by node, O(depth)
with no replay and no counters: the loader's state stays "samples consumed", and resuming on any number
of data-parallel ranks recomputes every per-source position from it. Weights are quantised to integers
(2**24 parts in all) so the arithmetic is exact and identical on every machine.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WEIGHT_PARTS = 1 << 24
# m·weight must fit int64 in the vectorised path: 2**63 / 2**24 samples (5e11, i.e. 1e15 tokens at 2048).
MAX_SAMPLES = (1 << 63) // WEIGHT_PARTS - 1
_PHASE_TAG = 0x6D6978  # decorrelates the schedule's phases from the window permutations of the same seed


def _quantise(fractions: Sequence[float]) -> list[int]:
    """Integer parts summing to WEIGHT_PARTS (largest remainder), a positive fraction keeping >= 1 part."""
    raw = [f * WEIGHT_PARTS for f in fractions]
    parts = [math.floor(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: parts[i] - raw[i])[: WEIGHT_PARTS - sum(parts)]:
        parts[i] += 1
    for i, f in enumerate(fractions):
        if f > 0 and parts[i] == 0:
            raise ValueError(f"mixture weight {f:.3g} is below the schedule's resolution of 1/{WEIGHT_PARTS}")
    return parts


@dataclass
class _Node:
    weight: int  # integer parts of all sources below
    source: int = -1  # leaf: the source index; inner node: -1
    left: _Node | None = None
    right: _Node | None = None
    phase: int = 0  # in [0, weight): φ·weight of the stride sequence

    def left_count(self, m):
        """Samples the left subtree got among this node's first m (int or int64 array)."""
        return (m * self.left.weight + self.phase) // self.weight


class MixtureSchedule:
    """Source of every global sample, and how many samples each source got before it."""

    def __init__(self, fractions: Sequence[float], seed: int):
        if not fractions or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
            raise ValueError(f"mixture fractions {list(fractions)} must be >= 0 and sum to 1")
        self.fractions = [float(f) for f in fractions]
        self.num_sources = len(fractions)
        rng = np.random.default_rng([seed, _PHASE_TAG])
        parts = _quantise(self.fractions)
        self.quantised = [p / WEIGHT_PARTS for p in parts]  # what the schedule realises exactly
        self._root = self._build(list(range(self.num_sources)), parts, rng)

    def _build(self, sources: list[int], parts: list[int], rng: np.random.Generator) -> _Node:
        if len(sources) == 1:
            return _Node(weight=parts[sources[0]], source=sources[0])
        half = (len(sources) + 1) // 2
        left, right = self._build(sources[:half], parts, rng), self._build(sources[half:], parts, rng)
        node = _Node(weight=left.weight + right.weight, left=left, right=right)
        # A zero-weight node is never visited; any phase in [0, weight) keeps floor(0 + φ) = 0.
        node.phase = int(rng.integers(0, node.weight)) if node.weight else 0
        return node

    def counts(self, num_samples: int) -> list[int]:
        """Samples of each source among global samples [0, num_samples): O(depth), exact."""
        out = [0] * self.num_sources

        def walk(node: _Node, m: int) -> None:
            if node.source >= 0:
                out[node.source] = m
                return
            left = node.left_count(m) if node.weight else 0
            walk(node.left, left)
            walk(node.right, m - left)

        walk(self._root, num_samples)
        return out

    def assign(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, index within that source) of global samples [first, first + count), vectorised.

        The index of a sample within its source is how many earlier samples came from that source, so
        source k's j-th sample is its j-th window in its own (seeded, per-epoch) order.
        """
        if first < 0 or count < 0 or first + count > MAX_SAMPLES:
            raise ValueError(f"samples [{first}, {first + count}) outside the schedule's [0, {MAX_SAMPLES})")
        sources = np.empty(count, dtype=np.int64)
        local = np.empty(count, dtype=np.int64)

        def walk(node: _Node, where: np.ndarray, m: np.ndarray) -> None:
            if where.size == 0:
                return
            if node.source >= 0:
                sources[where], local[where] = node.source, m
                return
            before = node.left_count(m)
            go_left = node.left_count(m + 1) > before
            walk(node.left, where[go_left], before[go_left])
            walk(node.right, where[~go_left], (m - before)[~go_left])

        walk(self._root, np.arange(count), np.arange(first, first + count, dtype=np.int64))
        return sources, local

    def shares(self, num_samples: int) -> list[float]:
        """Realised share of each source among the first num_samples samples (token share, see above)."""
        if num_samples <= 0:
            return [0.0] * self.num_sources
        return [c / num_samples for c in self.counts(num_samples)]
