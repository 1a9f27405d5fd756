"""Binary token shards: a fixed 64-byte header, then the tokens; plus an index file per shard folder.

Header (little-endian):  magic b"LMRTOKS\\0" | format version u32 | dtype code u32 | num_tokens u64 |
                         vocab_size u64 | num_documents u64 | zero padding to 64 bytes.
The header makes a shard self-describing: a truncated, foreign or corrupted file is refused with its
path instead of being read as garbage tokens. The index records each shard's sha256, verified when a
TokenStream opens the folder (once per process per file: see `verify_shards`), so zeroed or garbled
bytes of the right size are refused too. Documents are separated by EOS (and start with BOS when
the tokenizer has one); the loader treats the shards of a folder as one stream.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lmrepro.io import file_sha256, write_json

MAGIC = b"LMRTOKS\0"
FORMAT_VERSION = 1
HEADER_BYTES = 64
_HEADER = struct.Struct("<8sIIQQQ")
_DTYPE_CODES = {16: np.dtype("<u2"), 32: np.dtype("<u4")}
INDEX_FORMAT = "lmrepro-token-shards"
INDEX_FILE = "index.json"  # written last in a shard folder: its presence marks the folder complete
_verified: set[tuple[str, int, int, str]] = set()  # (shard, bytes, mtime_ns, sha256) verified in this process


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest shard dtype that holds every token id of a vocabulary."""
    if vocab_size <= 2**16:
        return _DTYPE_CODES[16]
    if vocab_size <= 2**32:
        return _DTYPE_CODES[32]
    raise ValueError(f"vocab_size {vocab_size} does not fit a uint32 shard")


@dataclass(frozen=True)
class ShardHeader:
    version: int
    dtype: np.dtype
    num_tokens: int
    vocab_size: int
    num_documents: int


def write_shard(path: str | Path, tokens: np.ndarray, *, vocab_size: int, num_documents: int) -> str:
    """Write one shard atomically (temp file + rename); return its sha256."""
    path = Path(path)
    dtype = dtype_for_vocab(vocab_size)
    tokens = np.asarray(tokens)
    if tokens.size:
        low, high = int(tokens.min()), int(tokens.max())
        if high >= vocab_size or low < 0:
            bad = high if high >= vocab_size else low
            raise ValueError(
                f"{path}: token id {bad} out of range for vocab_size {vocab_size} "
                f"(ids must be in [0, {vocab_size}))"
            )
    code = dtype.itemsize * 8
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, code, tokens.size, vocab_size, num_documents)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(header.ljust(HEADER_BYTES, b"\0"))
        f.write(tokens.astype(dtype, copy=False).tobytes())
    digest = file_sha256(tmp)
    os.replace(tmp, path)
    return digest


def read_header(path: str | Path) -> ShardHeader:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token shard {path} does not exist")
    with path.open("rb") as f:
        raw = f.read(HEADER_BYTES)
    if raw[:8] != MAGIC:
        raise ValueError(f"{path} is not an lmrepro token shard (bad magic {raw[:8]!r}, expected {MAGIC!r})")
    if len(raw) < HEADER_BYTES:
        raise ValueError(f"{path}: header is truncated ({len(raw)} of {HEADER_BYTES} bytes)")
    _, version, code, num_tokens, vocab_size, num_documents = _HEADER.unpack(raw[: _HEADER.size])
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: shard format version {version}; this lmrepro reads {FORMAT_VERSION}")
    if code not in _DTYPE_CODES:
        raise ValueError(f"{path}: unknown dtype code {code}; valid: {sorted(_DTYPE_CODES)}")
    dtype = _DTYPE_CODES[code]
    expected = HEADER_BYTES + num_tokens * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{path}: file is {actual} bytes but its header promises {num_tokens} tokens "
            f"({expected} bytes); the shard is truncated or corrupted"
        )
    return ShardHeader(version, dtype, num_tokens, vocab_size, num_documents)


def read_shard(path: str | Path) -> np.ndarray:
    """Memory-map a shard's tokens (read-only) after checking its header."""
    header = read_header(path)
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_BYTES, shape=(header.num_tokens,))


def write_index(
    folder: str | Path,
    shards: list[dict],
    *,
    vocab_size: int,
    bos_id: int | None,
    eos_id: int | None,
    tokenizer_sha256: str,
    source: dict,
    extra: dict | None = None,
) -> Path:
    """Write the index file (INDEX_FILE) last (atomically): its presence says the shard folder is complete.

    `extra`: more top-level entries (spike shards: `spikes`, the counts of rows kept and skipped)."""
    folder = Path(folder)
    index = {
        "format": INDEX_FORMAT,
        "version": FORMAT_VERSION,
        "dtype": dtype_for_vocab(vocab_size).name,
        "vocab_size": vocab_size,
        "bos_id": bos_id,
        "eos_id": eos_id,
        "tokenizer_sha256": tokenizer_sha256,
        "num_tokens": sum(s["num_tokens"] for s in shards),
        "num_documents": sum(s["num_documents"] for s in shards),
        "source": source,
        **(extra or {}),
        "shards": shards,
    }
    path = folder / INDEX_FILE
    write_json(path, index, indent=2)
    return path


def read_index(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"shard index {path} does not exist (run the tokenize step first)")
    index = json.loads(path.read_text())
    if index.get("format") != INDEX_FORMAT:
        raise ValueError(f"{path} is not an lmrepro shard index (format {index.get('format')!r})")
    return index


def verify_shards(paths: list[Path], sha256s: list[str], index_path: Path) -> None:
    """Check each shard's bytes against the sha256 its index records: ValueError naming the first bad one.

    A shard already verified in this process (same path, size and mtime) is not hashed again, so the
    training loader, validation and evals opening the same folder pay once. Shards are hashed on a few
    threads (hashlib releases the GIL); benchmarks/integrity/ has the cost against plain reading.
    """
    keys = []
    for path, digest in zip(paths, sha256s, strict=True):
        stat = path.stat()
        keys.append((str(path.resolve()), stat.st_size, stat.st_mtime_ns, digest))
    todo = [(path, key) for path, key in zip(paths, keys, strict=True) if key not in _verified]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1, len(todo)))) as pool:
        actual = list(pool.map(file_sha256, [path for path, _ in todo]))
    for (path, key), digest in zip(todo, actual, strict=True):
        if digest != key[3]:
            raise ValueError(
                f"{path}: sha256 does not match the one {index_path} records; the shard is corrupted "
                f"(zeroed or garbled bytes): delete {index_path.parent} and tokenize again"
            )
        _verified.add(key)


class TokenStream:
    """The shards of a folder (listed by its INDEX_FILE), read as one concatenated, memory-mapped stream;
    their checksums are verified when it opens (``verify_checksums=False``: header checks only).

    ``verify_share=(rank, ranks)``: this process verifies only shards rank, rank + ranks, … — the
    training ranks split the hashing of a dataset they all read; a rank that finds a bad shard fails, and
    torchrun stops the others.
    """

    def __init__(
        self, folder: str | Path, verify_checksums: bool = True, verify_share: tuple[int, int] = (0, 1)
    ):
        self.folder = Path(folder)
        self.index_path = self.folder / INDEX_FILE
        self.index = read_index(self.index_path)
        self.vocab_size: int = self.index["vocab_size"]
        self.eos_id: int | None = self.index["eos_id"]  # None: spike rows have no boundary token
        self.bos_id: int | None = self.index["bos_id"]
        self._shards: list[np.ndarray] = []
        paths = [self.folder / entry["file"] for entry in self.index["shards"]]
        for path, entry in zip(paths, self.index["shards"], strict=True):
            header = read_header(path)  # truncation: the size disagrees with the header
            if header.num_tokens != entry["num_tokens"] or header.vocab_size != self.vocab_size:
                raise ValueError(
                    f"{path}: header ({header.num_tokens} tokens, vocab {header.vocab_size}) disagrees with "
                    f"{self.index_path} ({entry['num_tokens']} tokens, vocab {self.vocab_size})"
                )
        if verify_checksums:
            rank, ranks = verify_share
            digests = [entry["sha256"] for entry in self.index["shards"]]
            verify_shards(paths[rank::ranks], digests[rank::ranks], self.index_path)
        for path in paths:
            # A plain ndarray view of the mapping: slicing it skips np.memmap's per-slice bookkeeping.
            self._shards.append(np.asarray(read_shard(path)))
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])
        self._start_list = self._starts.tolist()  # bisect on a list: no numpy call per window
        self.num_tokens = int(self._starts[-1])

    def __len__(self) -> int:
        return self.num_tokens

    @property
    def shards(self) -> list[np.ndarray]:
        """Each shard's tokens, memory-mapped, in stream order."""
        return self._shards

    def window(self, start: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tokens [start, start + length) of the stream, crossing shard boundaries if needed.

        Written into `out` (length tokens, e.g. a row of a preallocated batch) when given, else a new int64
        array: the loader reads memory-mapped slices straight into its batch, with no copy in between.
        """
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(f"window [{start}, {start + length}) outside stream of {self.num_tokens} tokens")
        out = np.empty(length, dtype=np.int64) if out is None else out
        filled = 0
        shard = bisect.bisect_right(self._start_list, start) - 1
        offset = start - self._start_list[shard]
        while filled < length:
            piece = self._shards[shard][offset : offset + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard, offset = shard + 1, 0
        return out
