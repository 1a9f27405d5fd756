"""Spike-count rows (neurons x time bins, uint8) -> byte-mode token ids and back; n_fixed tile/crop.

Byte mode (vocabulary 256): SEP=255 row before the matrix is realised as one SEP token before each time bin,
i.e. time-major flattening where every bin becomes [SEP, c1 .. cN].
Counts >= 255 are clipped to 254 and counted.
"""

from __future__ import annotations

import numpy as np

BYTE_VOCAB = 256
BYTE_SEP = 255


def validate_row(spike_counts) -> np.ndarray | None:
    """Return the row as a 2-D array, or None when it is not 2-D (caller counts the skip)."""
    arr = np.asarray(spike_counts)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return None
    return arr


def fix_neurons(arr: np.ndarray, n_fixed: int, *, seed: int, sample_id: int) -> np.ndarray:
    """Tile rows from the top (fewer neurons) or crop a seeded contiguous block (more neurons)."""
    n = arr.shape[0]
    if n == n_fixed:
        return arr
    if n < n_fixed:
        reps = -(-n_fixed // n)
        return np.tile(arr, (reps, 1))[:n_fixed]
    rng = np.random.Generator(np.random.PCG64([int(seed), int(sample_id)]))
    start = int(rng.integers(0, n - n_fixed + 1))
    return arr[start : start + n_fixed]


def encode_bytes(arr: np.ndarray) -> tuple[np.ndarray, int]:
    """(neurons, bins) counts -> (tokens uint16 of length bins*(neurons+1), number of clipped counts)."""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"spike_counts must be 2-D, got shape {a.shape}")
    clipped = int(np.count_nonzero(a >= BYTE_SEP))
    body = np.minimum(a, BYTE_SEP - 1).astype(np.uint16).T  # (bins, neurons)
    out = np.empty((body.shape[0], body.shape[1] + 1), dtype=np.uint16)
    out[:, 0] = BYTE_SEP
    out[:, 1:] = body
    return out.reshape(-1), clipped


def decode_bytes(tokens: np.ndarray, n_neurons: int) -> np.ndarray:
    """Inverse of encode_bytes: tokens -> (neurons, bins) uint8."""
    t = np.asarray(tokens)
    if t.size % (n_neurons + 1):
        raise ValueError(f"{t.size} tokens is not a multiple of n_neurons+1={n_neurons + 1}")
    m = t.reshape(-1, n_neurons + 1)
    if np.any(m[:, 0] != BYTE_SEP):
        raise ValueError("byte tokens: expected SEP at the start of every time bin")
    return m[:, 1:].T.astype(np.uint8)
