"""Patch tokenizer: p0 neurons x p1 time bins patches (seed-systems.md §1: `1x15` = 1 neuron x 15 bins).

Layout: matrix zero-padded to multiples of (p0, p1), patches in column-major order (time-patch major, then
neuron-patch), one SEP before each time-patch column. Ids: 0..K-1 patches (most frequent first, ties by
bytes), then SEP, UNK. An unknown patch becomes UNK and is counted (never silently id 0); UNK decodes to
zeros. Saved as spike_tokenizer.json (mode patch, its build parameters, the sha256 of the patches) +
patches.npy, no pickle; deterministic from its data and parameters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmrepro.data.spikes import TOKENIZER_FILE, TOKENIZER_FORMAT, read_tokenizer_meta
from lmrepro.io import file_sha256

FORMAT_VERSION = 1
N_SPECIAL = 2  # SEP, UNK


def to_patches(arr: np.ndarray, p0: int, p1: int) -> tuple[np.ndarray, int, int]:
    """(neurons, bins) -> (n_tp*n_np, p0*p1) uint8 patch rows in time-patch-major order, n_np, n_tp."""
    a = np.asarray(arr, dtype=np.uint8)
    n, t = a.shape
    n_np, n_tp = -(-n // p0), -(-t // p1)
    pad = np.zeros((n_np * p0, n_tp * p1), dtype=np.uint8)
    pad[:n, :t] = a
    # (n_np, p0, n_tp, p1) -> (n_tp, n_np, p0, p1)
    p = pad.reshape(n_np, p0, n_tp, p1).transpose(2, 0, 1, 3).reshape(n_tp * n_np, p0 * p1)
    return np.ascontiguousarray(p), n_np, n_tp


def _void(rows: np.ndarray) -> np.ndarray:
    rows = np.ascontiguousarray(rows)
    return rows.view(np.dtype((np.void, rows.shape[1]))).ravel()


@dataclass
class PatchTokenizer:
    p0: int
    p1: int
    patches: np.ndarray  # (K, p0*p1) uint8
    fingerprint: str = ""
    built_from: dict | None = None  # what build() saw: rows, patches counted, distinct patches
    requested_vocab_size: int | None = None  # V asked of build(); vocab_size is less if fewer patches exist
    sha256: str = ""  # of spike_tokenizer.json, once saved or loaded (shards record it)
    mode = "patch"
    bos_id = None
    eos_id = None

    def __post_init__(self):
        self._keys = _void(self.patches)
        self._order = np.argsort(self._keys)
        self._sorted = self._keys[self._order]

    @property
    def sep_id(self) -> int:
        return len(self.patches)

    @property
    def unk_id(self) -> int:
        return len(self.patches) + 1

    @property
    def vocab_size(self) -> int:
        return len(self.patches) + N_SPECIAL

    def encode(self, arr: np.ndarray) -> tuple[np.ndarray, int]:
        """-> (tokens int64, number of UNK patches)."""
        rows, n_np, n_tp = to_patches(arr, self.p0, self.p1)
        keys = _void(rows)
        pos = np.searchsorted(self._sorted, keys).clip(0, max(len(self._sorted) - 1, 0))
        hit = (self._sorted[pos] == keys) if len(self._sorted) else np.zeros(len(keys), bool)
        ids = np.where(hit, self._order[pos] if len(self._order) else 0, self.unk_id).reshape(n_tp, n_np)
        out = np.empty((n_tp, n_np + 1), dtype=np.int64)
        out[:, 0] = self.sep_id
        out[:, 1:] = ids
        return out.reshape(-1), int(np.count_nonzero(~hit))

    def encode_row(self, arr: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
        """(tokens, counts for the shard index) of one row."""
        tokens, unk = self.encode(arr)
        return tokens, {"unk_patches": unk, "patches": int(tokens.size - -(-arr.shape[1] // self.p1))}

    def column_tokens(self, n_neurons: int) -> int:
        """Tokens of one time-patch column (SEP + one per neuron patch)."""
        return -(-n_neurons // self.p0) + 1

    @property
    def bins_per_column(self) -> int:
        return self.p1

    def decode(self, tokens: np.ndarray, n_neurons: int) -> np.ndarray:
        """Tokens -> (n_np*p0 cropped to n_neurons, n_tp*p1) uint8; UNK -> zeros."""
        n_np = -(-n_neurons // self.p0)
        m = np.asarray(tokens).reshape(-1, n_np + 1)
        if np.any(m[:, 0] != self.sep_id):
            raise ValueError("patch tokens: expected SEP before every time-patch column")
        ids = m[:, 1:]
        table = np.vstack([self.patches, np.zeros((N_SPECIAL, self.p0 * self.p1), np.uint8)])
        n_tp = ids.shape[0]
        p = table[ids].reshape(n_tp, n_np, self.p0, self.p1).transpose(1, 2, 0, 3)
        return p.reshape(n_np * self.p0, n_tp * self.p1)[:n_neurons]

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.save(d / "patches.npy", self.patches, allow_pickle=False)
        meta = {
            "format": TOKENIZER_FORMAT,
            "format_version": FORMAT_VERSION,
            "mode": "patch",
            "p0": self.p0,
            "p1": self.p1,
            "vocab_size": self.vocab_size,
            "requested_vocab_size": self.requested_vocab_size or self.vocab_size,
            "num_patches": len(self.patches),
            "sep_id": self.sep_id,
            "unk_id": self.unk_id,
            "unk_decodes_to": "zeros",
            "patches_file": "patches.npy",
            "patches_sha256": file_sha256(d / "patches.npy"),
            "data_fingerprint": self.fingerprint,
            "built_from": self.built_from,
        }
        (d / TOKENIZER_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        self.sha256 = file_sha256(d / TOKENIZER_FILE)
        return d / TOKENIZER_FILE

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        p0: int | None = None,
        p1: int | None = None,
        vocab_size: int | None = None,
    ) -> PatchTokenizer:
        """Load a saved tokenizer; p0/p1/vocab_size, when given, must be what it was built for."""
        f, meta = read_tokenizer_meta(directory)
        if meta.get("mode") != "patch":
            raise ValueError(f"{f}: a {meta.get('mode')} tokenizer, not a patch tokenizer")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{f}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        if p0 is not None and p1 is not None and (meta["p0"], meta["p1"]) != (p0, p1):
            raise ValueError(f"{f}: built for patch {meta['p0']}x{meta['p1']}, run asks for {p0}x{p1}")
        requested = meta.get("requested_vocab_size", meta["vocab_size"])
        if vocab_size is not None and requested != vocab_size:
            raise ValueError(f"{f}: built for vocab_size {requested}, run asks for {vocab_size}")
        npy = f.parent / meta["patches_file"]
        if not npy.is_file():
            raise FileNotFoundError(f"{npy} (named by {f}) does not exist")
        if file_sha256(npy) != meta["patches_sha256"]:
            raise ValueError(f"{npy}: sha256 differs from the one {f} records; the tokenizer is corrupted")
        patches = np.load(npy, allow_pickle=False)
        if patches.shape != (meta["num_patches"], meta["p0"] * meta["p1"]) or patches.dtype != np.uint8:
            raise ValueError(f"{f}: patches.npy shape {patches.shape} / dtype {patches.dtype} inconsistent")
        tok = cls(
            meta["p0"], meta["p1"], patches, meta["data_fingerprint"], meta.get("built_from"), requested
        )
        tok.sha256 = file_sha256(f)
        return tok


def build(rows, *, p0: int = 1, p1: int = 15, vocab_size: int = 32000) -> PatchTokenizer:
    """Most frequent patches up to vocab_size - 2 (SEP, UNK); ties broken by patch bytes. Pure function."""
    if vocab_size <= N_SPECIAL or p0 < 1 or p1 < 1:
        raise ValueError(f"patch {p0}x{p1} and vocab_size {vocab_size}: need p0, p1 >= 1, vocab_size > 2")
    counts: dict[bytes, int] = {}
    h = hashlib.sha256(f"{p0}x{p1}:{vocab_size}".encode())
    num_rows = 0
    for arr in rows:
        num_rows += 1
        a = np.ascontiguousarray(arr, dtype=np.uint8)
        h.update(np.asarray(a.shape, np.int64).tobytes() + a.tobytes())
        uniq, c = np.unique(_void(to_patches(a, p0, p1)[0]), return_counts=True)
        for k, v in zip(uniq.tolist(), c.tolist(), strict=True):
            counts[k] = counts.get(k, 0) + v
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - N_SPECIAL]
    patches = np.frombuffer(b"".join(k for k, _ in items), np.uint8).reshape(-1, p0 * p1).copy()
    built_from = {
        "rows": num_rows,
        "patches_counted": sum(counts.values()),
        "distinct_patches": len(counts),
        "patches_in_vocab_share": sum(c for _, c in items) / max(sum(counts.values()), 1),
    }
    return PatchTokenizer(p0, p1, patches, h.hexdigest(), built_from, vocab_size)
