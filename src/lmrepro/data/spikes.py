"""Spike-count rows (the Neural Pile: neurons x time bins, uint8) -> token ids and back.

Byte mode (vocabulary 256, nothing learned): the SEP row of 255 before the matrix is realised as one SEP
token before each time bin, i.e. time-major flattening where every bin becomes [SEP, c1 .. cN] and a count
is its own token id. Counts >= 255 are clipped to 254 and counted, so SEP is never ambiguous.

`SpikeRows` is what a dataset says about its rows before tokenisation: the `source_dataset` (lab) filter
and `n_fixed` (tile or crop every row to exactly n neurons; the crop is a contiguous block chosen by a
generator seeded with (n_fixed_seed, sample id), the sample id being the row's index in its split).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lmrepro.io import file_sha256

BYTE_VOCAB = 256
BYTE_SEP = 255
TOKENIZER_FILE = "spike_tokenizer.json"  # the anchor of a spike tokenizer folder (bytes or patch)
TOKENIZER_FORMAT = "lmrepro-spike-tokenizer"
NOT_2D_EXAMPLES = 5  # rows named in the stats (and the log) per piece


def validate_row(spike_counts) -> np.ndarray | None:
    """Return the row as a 2-D array, or None when it is not 2-D (caller counts the skip)."""
    arr = np.asarray(spike_counts)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
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


class ByteTokenizer:
    """Byte mode as a tokenizer folder: spike_tokenizer.json only (there is nothing to learn)."""

    mode = "bytes"
    vocab_size = BYTE_VOCAB
    sep_id = BYTE_SEP
    unk_id = None
    bos_id = None
    eos_id = None

    def __init__(self, sha256: str = ""):
        self.sha256 = sha256

    def encode_row(self, arr: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """(tokens, counts for the shard index) of one row."""
        tokens, clipped = encode_bytes(arr)
        return tokens, {"counts_clipped": clipped}

    def decode(self, tokens: np.ndarray, n_neurons: int) -> np.ndarray:
        return decode_bytes(tokens, n_neurons)

    def column_tokens(self, n_neurons: int) -> int:
        """Tokens of one column (SEP + the neurons of one time step)."""
        return n_neurons + 1

    bins_per_column = 1

    @staticmethod
    def meta() -> dict:
        return {
            "format": TOKENIZER_FORMAT,
            "format_version": 1,
            "mode": "bytes",
            "vocab_size": BYTE_VOCAB,
            "sep_id": BYTE_SEP,
            "max_count": BYTE_SEP - 1,
            "layout": "per time bin: SEP, then one count per neuron (counts >= 255 clipped to 254)",
        }

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / TOKENIZER_FILE).write_text(json.dumps(self.meta(), indent=2, sort_keys=True) + "\n")
        return d / TOKENIZER_FILE


def read_tokenizer_meta(directory: str | Path) -> tuple[Path, dict]:
    """(spike_tokenizer.json, its contents) of a spike tokenizer folder; errors name the file."""
    d = Path(directory)
    f = d / TOKENIZER_FILE if d.is_dir() or not d.name.endswith(".json") else d
    if not f.is_file():
        raise FileNotFoundError(f"spike tokenizer file {f} does not exist")
    try:
        meta = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != TOKENIZER_FORMAT:
        raise ValueError(f"{f} is not an lmrepro spike tokenizer (format {TOKENIZER_FORMAT!r})")
    if meta.get("mode") not in ("bytes", "patch"):
        raise ValueError(f"{f}: mode {meta.get('mode')!r} is not valid; expected bytes or patch")
    return f, meta


def load_byte_tokenizer(directory: str | Path) -> ByteTokenizer:
    f, meta = read_tokenizer_meta(directory)
    expected = ByteTokenizer.meta()
    differ = sorted(k for k in ("mode", "vocab_size", "sep_id", "max_count") if meta.get(k) != expected[k])
    if differ:
        raise ValueError(f"{f}: {', '.join(f'{k} {meta.get(k)!r}' for k in differ)} is not byte mode")
    return ByteTokenizer(file_sha256(f))


# ------------------------------------------------------------------------------------ the row pipeline


@dataclass(frozen=True)
class SpikeRows:
    """What a spike dataset says about its rows before tokenisation (datasets.<name> in config.yaml)."""

    source_dataset: tuple[str, ...] | None = None
    """Keep only rows whose `source_dataset` (lab) is one of these; None keeps every row."""
    n_fixed: int | None = None
    """Tile or crop every row to exactly this many neurons; None keeps each row's own count."""
    n_fixed_seed: int = 0
    """The crop's seed: a row's block is drawn from PCG64([n_fixed_seed, its index in the split])."""

    @classmethod
    def from_dict(cls, d: dict | None) -> SpikeRows:
        d = d or {}
        labs = d.get("source_dataset")
        return cls(tuple(labs) if labs else None, d.get("n_fixed"), int(d.get("n_fixed_seed", 0)))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["source_dataset"] = list(self.source_dataset) if self.source_dataset else None
        return d


def new_row_stats() -> dict:
    return {"rows_read": 0, "rows_kept": 0, "rows_other_labs": 0, "rows_not_2d": 0, "not_2d_examples": []}


def merge_row_stats(total: dict, part: dict) -> dict:
    """Sum per-piece stats (numbers add, example lists concatenate up to NOT_2D_EXAMPLES)."""
    for key, value in part.items():
        if isinstance(value, list):
            total[key] = (total.get(key, []) + value)[:NOT_2D_EXAMPLES]
        else:
            total[key] = total.get(key, 0) + value
    return total


def select_rows(
    rows: Iterator[tuple[int, np.ndarray | None, str | None, str]], spec: SpikeRows, stats: dict
) -> Iterator[tuple[int, np.ndarray]]:
    """(sample id, counts) of the rows a dataset keeps, n_fixed applied; `stats` counts what was dropped.

    `rows` yields (sample id, counts or None when not 2-D, lab, where) — `where` ("file:row") names a
    skipped row in the stats, the way the seed's loader warns and goes on.
    """
    labs = set(spec.source_dataset) if spec.source_dataset else None
    for sample_id, counts, lab, where in rows:
        stats["rows_read"] += 1
        if labs is not None and lab not in labs:
            stats["rows_other_labs"] += 1
            continue
        if counts is None:
            stats["rows_not_2d"] += 1
            if len(stats["not_2d_examples"]) < NOT_2D_EXAMPLES:
                stats["not_2d_examples"].append(where)
            continue
        if spec.n_fixed is not None:
            counts = fix_neurons(counts, spec.n_fixed, seed=spec.n_fixed_seed, sample_id=sample_id)
        stats["rows_kept"] += 1
        yield sample_id, counts
