"""Inverse-frequency token weights from a run's training shards (token_weights = "inverse_frequency").

w[i] = 1 / p[i], p[i] being id i's share of the training tokens (a mixture: each source's shares weighted by
its token fraction), capped at `cap`; ids that never occur get the cap. The seed's committed table
(primate_token_weights_inv.pt) has this shape: count 0 → ~1.18, 1 → ~9.0, 2 → ~34, …, capped at ~33,155,
the cap also hitting the deterministic SEP. `sep_weight` >= 0 sets SEP's weight instead (0 leaves it out of
the loss). Counting is one np.bincount per memory-mapped shard.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from lmrepro.data.shards import TokenStream

log = logging.getLogger(__name__)


def token_counts(folder: str | Path, vocab_size: int) -> np.ndarray:
    """How often each id occurs in a shard folder (int64 [vocab_size])."""
    stream = TokenStream(folder)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for shard in stream.shards:
        counts += np.bincount(shard, minlength=vocab_size)[:vocab_size]
    return counts


def inverse_frequency_weights(
    sources: list[tuple[str | Path, float]],
    vocab_size: int,
    *,
    cap: float,
    sep_id: int | None = None,
    sep_weight: float = -1.0,
) -> tuple[np.ndarray, dict]:
    """(float32 weights [vocab_size], a record of how they were made) from (shard folder, token fraction)."""
    total = sum(f for _, f in sources)
    share = np.zeros(vocab_size, dtype=np.float64)
    tokens = {}
    for folder, fraction in sources:
        counts = token_counts(folder, vocab_size)
        tokens[str(folder)] = int(counts.sum())
        share += (fraction / total) * counts / max(counts.sum(), 1)
    with np.errstate(divide="ignore"):
        weights = np.where(share > 0, 1.0 / share, np.inf)
    weights = np.minimum(weights, cap)
    if sep_weight >= 0:
        if sep_id is None:
            raise ValueError("training.token_weights_sep is set, but the run's tokenizer has no SEP id")
        weights[sep_id] = sep_weight
    record = {
        "kind": "inverse_frequency",
        "cap": cap,
        "sep_id": sep_id,
        "sep_weight": float(weights[sep_id]) if sep_id is not None else None,
        "tokens": tokens,
        "ids_never_seen": int(np.count_nonzero(share == 0)),
        "ids_capped": int(np.count_nonzero(weights >= cap)),
        "mean_weight_per_token": float((share * weights).sum()),
    }
    return weights.astype(np.float32), record


def write_inverse_frequency_weights(
    out: str | Path,
    sources: list[tuple[str | Path, float]],
    vocab_size: int,
    *,
    cap: float,
    sep_id: int | None = None,
    sep_weight: float = -1.0,
) -> dict:
    """The weights as a torch-saved 1-D float32 tensor (what training.token_weights loads), and the record
    of how they were made in a JSON beside it."""
    import torch

    from lmrepro.io import write_json

    weights, record = inverse_frequency_weights(
        sources, vocab_size, cap=cap, sep_id=sep_id, sep_weight=sep_weight
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    torch.save(torch.from_numpy(weights), tmp)
    tmp.replace(out)
    write_json(out.with_suffix(".json"), {**record, "first_weights": weights[:8].tolist()})
    log.info("token weights → %s: %s", out, record)
    return record
