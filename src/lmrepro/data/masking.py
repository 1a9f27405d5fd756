"""Masks for the masked-language-modelling objective (the torchtitan-mlm seed, issue 14).

A mask is a pure function of ``(seed, global sample index, window tokens, MaskingConfig)``: every window
gets its own generator ``numpy.random.Generator(numpy.random.PCG64([seed, sample_index]))`` -- never the
global numpy/torch RNG, never Python's ``hash()`` -- so the same sample is masked identically after a
resume, on any data-parallel size and on every tensor-parallel rank of a data-parallel group. (The seed
seeds with ``shuffle_seed + dp_rank``, so its masks change on resume and with the dp size; we do not.)

Draws from each window's generator, always full-length and always in this order, so that the positions do
not depend on the replacement scheme:

1. ``u = rng.random(seq)``: selection. ``bernoulli`` (the seed): position i is selected iff
   ``u[i] < mask_ratio`` and its token is maskable. ``exact``: the ``floor(mask_ratio * m + 0.5)``
   maskable positions with the smallest ``u`` (m = number of maskable positions; ties by position).
2. ``80_10_10`` only: ``v = rng.random(seq)``: a selected position becomes the mask token if ``v < 0.8``,
   a random id if ``0.8 <= v < 0.9``, and keeps its token otherwise; then ``rng.integers`` draws the
   random ids, uniform over ``[0, vocab_size)`` minus ``never_mask_ids`` minus the mask token (so a
   "random" token is never a special token nor the mask itself).

``all_mask`` (the seed) replaces every selected token by the mask token (no 80/10/10). Unlike the seed,
BOS/EOS/padding (``never_mask_ids``) are never selected. Labels are the original token at selected
positions and -100 elsewhere; no shift (windows are seq_len long, not seq_len + 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

IGNORE_INDEX = -100
# The seed of the held-out (evaluation) masks: the same masks at every evaluated step and in every run,
# whatever the run seed. Use ``mask_batch(tokens, heldout_sample_indices, HELDOUT_MASK_SEED, cfg)``.
HELDOUT_MASK_SEED = 0x4D4C4D5F  # "MLM_"
REPLACEMENTS = ("all_mask", "80_10_10")
SELECTIONS = ("bernoulli", "exact")


def default_never_mask_ids(
    bos_id: int | None, eos_id: int | None, pad_id: int | None = None
) -> tuple[int, ...]:
    """BOS/EOS/padding: the default ``never_mask_ids`` (``None`` entries are skipped)."""
    return tuple(sorted({i for i in (bos_id, eos_id, pad_id) if i is not None}))


@dataclass(frozen=True)
class MaskingConfig:
    mask_ratio: float
    mask_token_id: int
    vocab_size: int
    never_mask_ids: tuple[int, ...] = field(default_factory=tuple)  # see default_never_mask_ids
    replacement: str = "all_mask"
    selection: str = "bernoulli"

    def __post_init__(self) -> None:
        r = self.mask_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not (0.0 < r < 1.0):  # NaN fails too
            raise ValueError(f"training.mlm.mask_ratio must be a number with 0 < ratio < 1, got {r!r}")
        if self.vocab_size <= 0:
            raise ValueError(f"MaskingConfig.vocab_size must be positive, got {self.vocab_size}")
        if not (0 <= self.mask_token_id < self.vocab_size):
            raise ValueError(
                f"training.mlm.mask_token id {self.mask_token_id} is outside the vocabulary "
                f"[0, {self.vocab_size})"
            )
        ids = tuple(sorted({int(i) for i in self.never_mask_ids}))
        bad = [i for i in ids if not (0 <= i < self.vocab_size)]
        if bad:
            raise ValueError(f"training.mlm.never_mask_ids {bad} are outside [0, {self.vocab_size})")
        object.__setattr__(self, "never_mask_ids", ids)
        if self.replacement not in REPLACEMENTS:
            raise ValueError(
                f"training.mlm.replacement must be one of {REPLACEMENTS}, got {self.replacement!r}"
            )
        if self.selection not in SELECTIONS:
            raise ValueError(f"training.mlm.selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.replacement == "80_10_10" and len(self._random_excluded()) >= self.vocab_size:
            raise ValueError("80_10_10 needs at least one id that is neither special nor the mask token")

    def _random_excluded(self) -> np.ndarray:
        return np.array(sorted({*self.never_mask_ids, self.mask_token_id}), dtype=np.int64)


def _random_ids(rng: np.random.Generator, n: int, vocab_size: int, excluded: np.ndarray) -> np.ndarray:
    """n ids uniform over [0, vocab_size) minus the sorted ``excluded``, without a vocabulary-sized array."""
    k = rng.integers(0, vocab_size - len(excluded), size=n, dtype=np.int64)
    # The k-th allowed id is k + (number of excluded ids at or below it).
    return k + np.searchsorted(excluded - np.arange(len(excluded)), k, side="right")


def mask_window(
    tokens: torch.Tensor, seed: int, sample_index: int, cfg: MaskingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [seq] (int64) -> (inputs [seq], labels [seq]) on tokens' device; see the module docstring."""
    if tokens.dim() != 1:
        raise ValueError(f"mask_window takes one window [seq], got shape {tuple(tokens.shape)}")
    for name, v in (("seed", seed), ("sample_index", sample_index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    rng = np.random.Generator(np.random.PCG64([int(seed), int(sample_index)]))
    tok = tokens.detach().cpu().numpy().astype(np.int64, copy=False)
    seq = tok.shape[0]
    maskable = ~np.isin(tok, np.asarray(cfg.never_mask_ids, dtype=np.int64))
    u = rng.random(seq)
    if cfg.selection == "bernoulli":
        selected = (u < cfg.mask_ratio) & maskable
    else:
        candidates = np.flatnonzero(maskable)
        n = int(math.floor(cfg.mask_ratio * len(candidates) + 0.5))
        selected = np.zeros(seq, dtype=bool)
        selected[candidates[np.argsort(u[candidates], kind="stable")[:n]]] = True
    inputs = tok.copy()
    if cfg.replacement == "all_mask":
        inputs[selected] = cfg.mask_token_id
    else:
        v = rng.random(seq)
        random_ids = _random_ids(rng, seq, cfg.vocab_size, cfg._random_excluded())
        to_mask = selected & (v < 0.8)
        to_random = selected & (v >= 0.8) & (v < 0.9)
        inputs[to_mask] = cfg.mask_token_id
        inputs[to_random] = random_ids[to_random]
    labels = np.where(selected, tok, IGNORE_INDEX)
    return (
        torch.from_numpy(inputs).to(tokens.device),
        torch.from_numpy(labels.astype(np.int64)).to(tokens.device),
    )


def mask_batch(
    tokens: torch.Tensor, sample_indices: Sequence[int] | torch.Tensor, seed: int, cfg: MaskingConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, seq] with the global sample index of each row -> (inputs [B, seq], labels [B, seq])."""
    if tokens.dim() != 2:
        raise ValueError(f"mask_batch takes [B, seq], got shape {tuple(tokens.shape)}")
    idx = sample_indices.tolist() if isinstance(sample_indices, torch.Tensor) else list(sample_indices)
    if len(idx) != tokens.shape[0]:
        raise ValueError(f"{len(idx)} sample indices for a batch of {tokens.shape[0]} windows")
    if tokens.shape[0] == 0:
        return tokens.clone(), torch.full_like(tokens, IGNORE_INDEX)
    pairs = [mask_window(tokens[b], seed, int(i), cfg) for b, i in enumerate(idx)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def resolve_mask_token(
    token_or_id: str | int, tokenizer_vocab: Mapping[str, int] | Callable[[str], int | None]
) -> int:
    """A mask token given as a string (looked up) or an id (checked) -> its id.

    ``tokenizer_vocab`` is a token -> id mapping or a lookup callable (e.g. ``tokenizers``'
    ``token_to_id``, which returns None, or tiktoken's ``encode_single_token``, which raises KeyError).
    """
    where = f"training.mlm.mask_token {token_or_id!r} is not in the tokenizer's vocabulary"
    if isinstance(token_or_id, bool):
        raise ValueError(f"training.mlm.mask_token must be a token string or an id, got {token_or_id!r}")
    if isinstance(token_or_id, (int, np.integer)):
        i = int(token_or_id)
        known: Iterable[int] | None = (
            tokenizer_vocab.values() if isinstance(tokenizer_vocab, Mapping) else None
        )
        if i < 0 or (known is not None and i not in set(known)):
            raise ValueError(where)
        return i
    if not isinstance(token_or_id, str):
        raise ValueError(f"training.mlm.mask_token must be a token string or an id, got {token_or_id!r}")
    if isinstance(tokenizer_vocab, Mapping):
        i = tokenizer_vocab.get(token_or_id)
    else:
        try:
            i = tokenizer_vocab(token_or_id)
        except (KeyError, ValueError) as e:
            raise ValueError(where) from e
    if i is None or isinstance(i, bool) or int(i) < 0:
        raise ValueError(where)
    return int(i)


NAMED_SPECIALS = ("bos", "eos", "pad")  # never_mask_tokens entries naming the tokenizer's own specials


def mlm_token_ids(
    mask_token: str | int,
    never_mask_tokens: Sequence[str | int],
    token_to_id: Callable[[str], int | None],
    *,
    vocab_size: int,
    specials: Mapping[str, int | None],
) -> dict:
    """training.mlm's token settings -> {"mask_token_id", "never_mask_ids"} for a tokenizer.

    ``token_to_id`` looks a token string up (None: not in the vocabulary); ``specials`` maps "bos", "eos",
    "pad" to the tokenizer's ids (None: it has none, and the entry is skipped). Unknown tokens and ids
    outside [0, vocab_size) are errors naming the key.
    """
    mask_id = resolve_mask_token(mask_token, token_to_id)
    if mask_id >= vocab_size:
        raise ValueError(
            f"training.mlm.mask_token {mask_token!r} is not in the tokenizer's vocabulary of {vocab_size}"
        )
    ids: set[int] = set()
    for entry in never_mask_tokens:
        if isinstance(entry, str) and entry in NAMED_SPECIALS:
            if specials.get(entry) is not None:
                ids.add(int(specials[entry]))
            continue
        try:
            i = resolve_mask_token(entry, token_to_id)
        except ValueError:
            i = -1
        if not 0 <= i < vocab_size:
            raise ValueError(
                f"training.mlm.never_mask_tokens: {entry!r} is not in the tokenizer's vocabulary"
            )
        ids.add(i)
    return {"mask_token_id": mask_id, "never_mask_ids": sorted(ids)}
