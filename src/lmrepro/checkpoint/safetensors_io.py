"""Safetensors files read and written one tensor at a time, so memory stays at about one tensor.

Why not the ``safetensors`` package here: ``safe_open`` memory-maps the file, and every page a tensor
touches stays resident (and counted in the process's RSS) until the file is closed, so reading a checkpoint
tensor by tensor still ends up holding all of it; ``save_file`` takes a dict of every tensor and builds
each one's bytes before writing, i.e. two copies of a shard. The format is small enough to do by hand: an
8-byte little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__":
{...}}``, then the tensors' bytes back to back (https://github.com/huggingface/safetensors#format).
Files written here load in ``safetensors``/transformers, which the tests check.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {dtype: name for name, dtype in _ST_DTYPES.items()}


MAX_HEADER_BYTES = 100_000_000  # the safetensors package's own limit


class SafetensorsReader:
    """The tensors of one ``.safetensors`` file, each read with plain reads into fresh memory.

    The header is bounds-checked before anything is allocated: its length against the file's size, each
    tensor's offsets against the data section and against its shape, so a corrupted or truncated file is
    a one-line ValueError naming it (not an OverflowError or MemoryError from a garbled length).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        try:
            with self.path.open("rb") as f:
                raw_len = f.read(8)
                if len(raw_len) < 8:
                    raise ValueError(f"{self.path} is not a valid safetensors file: {size} bytes, no header")
                (header_len,) = struct.unpack("<Q", raw_len)
                if header_len > min(size - 8, MAX_HEADER_BYTES):
                    raise ValueError(
                        f"{self.path} is not a valid safetensors file: header length {header_len} bytes, but "
                        f"the file has {size - 8} bytes after it (at most {MAX_HEADER_BYTES} allowed); the "
                        f"file is corrupted or truncated"
                    )
                header = json.loads(f.read(header_len))
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{self.path} is not a valid safetensors file: {e}") from None
        if not isinstance(header, dict):
            raise ValueError(f"{self.path} is not a valid safetensors file: the header is not a JSON object")
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self.entries: dict[str, dict[str, Any]] = header
        self._data_start = 8 + header_len
        for key, entry in header.items():
            self._check_entry(key, entry, size - self._data_start)

    def _check_entry(self, key: str, entry: Any, data_bytes: int) -> None:
        """Offsets within the data section, a shape of non-negative ints: else ValueError naming the file."""
        where = f"{self.path}: tensor {key!r}"
        ok = isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
        shape, offsets = entry.get("shape") if ok else None, entry.get("data_offsets") if ok else None
        ints = isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2
        ints = ints and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape + offsets
        )
        if not ints:
            raise ValueError(f"{where} has no valid dtype, shape and data_offsets in the header: {entry!r}")
        begin, end = offsets
        if not begin <= end <= data_bytes:
            raise ValueError(
                f"{where} has data_offsets [{begin}, {end}] outside the file's {data_bytes} data bytes; the "
                f"file is corrupted or truncated"
            )

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        name = self.entries[key]["dtype"]
        if name not in _ST_DTYPES:
            raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {name}")
        return _ST_DTYPES[name]

    def read(self, key: str) -> torch.Tensor:
        if key not in self.entries:
            raise ValueError(f"{self.path} has no tensor {key!r}")
        shape, dtype = self.shape(key), self.dtype(key)
        nbytes = math.prod(shape) * dtype.itemsize
        begin, end = self.entries[key]["data_offsets"]
        if end - begin != nbytes:  # checked before allocating: a garbled shape is no MemoryError
            raise ValueError(
                f"{self.path}: tensor {key!r} spans {end - begin} bytes, its shape needs {nbytes}"
            )
        tensor = torch.empty(shape, dtype=dtype)
        if tensor.nbytes:
            with self.path.open("rb") as f:
                f.seek(self._data_start + begin)
                if f.readinto(_bytes_view(tensor)) != tensor.nbytes:
                    raise ValueError(f"{self.path} is truncated (tensor {key!r})")
        return tensor


def _bytes_view(tensor: torch.Tensor) -> Any:
    """A writable numpy uint8 view of a contiguous CPU tensor's memory (works for bfloat16 too)."""
    return tensor.reshape(-1).view(torch.uint8).numpy()


def write_safetensors(
    path: Path,
    entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
    tensors: Iterable[torch.Tensor],
    metadata: dict[str, str],
) -> None:
    """Write a safetensors file whose header is known up front, pulling the tensors one at a time."""
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": _ST_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer aligns the data to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for (name, dtype, shape), tensor in zip(entries, tensors, strict=True):
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise ValueError(
                    f"tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, expected {dtype} {list(shape)}"
                )
            if tensor.numel():
                f.write(_bytes_view(tensor.contiguous()))
            del tensor  # before the generator makes the next one: one tensor in memory at a time
