"""Documents from raw data files: JSONL (plain, .gz, .zst), Parquet, Arrow and plain text.

A file is cut into pieces of about ``piece_bytes`` each — line-aligned byte ranges of JSONL, runs of Parquet
row groups, row ranges of Arrow tables; a compressed or plain-text file is one piece. The tokenize step
turns each piece into one shard, so pieces are encoded in parallel and a rerun skips the finished ones.
Cutting depends only on the files, never on timing, so the shards of a split are always the same.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

# Longest suffix first: ".jsonl.gz" must win over ".gz".
FORMATS = {
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",
    ".jsonl.zst": "jsonl.zst",
    ".json.zst": "jsonl.zst",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
_BATCH_ROWS = 1024


def file_format(path: str | Path) -> str:
    name = Path(path).name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"{path}: unsupported file type; supported: {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Piece:
    """A contiguous part of one file: bytes [start, stop) of JSONL, row groups or rows [start, stop)."""

    file: str
    format: str
    start: int
    stop: int
    num_bytes: int

    def describe(self) -> str:
        unit = {"jsonl": "bytes", "parquet": "row groups", "arrow": "rows"}.get(self.format)
        return f"{self.file} ({unit} {self.start}-{self.stop})" if unit else self.file

    def to_dict(self) -> dict:
        return asdict(self)


def plan_pieces(files: Iterable[str | Path], piece_bytes: int) -> list[Piece]:
    """Cut files into pieces of about `piece_bytes` (in file order, then position)."""
    if piece_bytes < 1:
        raise ValueError(f"piece_bytes must be >= 1, got {piece_bytes}")
    pieces: list[Piece] = []
    for file in files:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
        fmt = file_format(path)
        if fmt == "jsonl":
            pieces += _plan_jsonl(path, piece_bytes)
        elif fmt == "parquet":
            pieces += _plan_parquet(path, piece_bytes)
        elif fmt == "arrow":
            pieces += _plan_arrow(path, piece_bytes)
        else:
            size = path.stat().st_size
            pieces.append(Piece(str(path), fmt, 0, size, size))
    return pieces


def _plan_jsonl(path: Path, piece_bytes: int) -> list[Piece]:
    size = path.stat().st_size
    starts = [0]
    with path.open("rb") as f:
        while starts[-1] + piece_bytes < size:
            f.seek(starts[-1] + piece_bytes)
            f.readline()  # the rest of the line we landed in belongs to the previous piece
            if f.tell() >= size:
                break
            starts.append(f.tell())
    stops = starts[1:] + [size]
    return [Piece(str(path), "jsonl", a, b, b - a) for a, b in zip(starts, stops, strict=True)]


def _plan_parquet(path: Path, piece_bytes: int) -> list[Piece]:
    meta = _parquet_file(path).metadata
    pieces, first, acc = [], 0, 0
    for group in range(meta.num_row_groups):
        acc += meta.row_group(group).total_byte_size
        if acc >= piece_bytes or group == meta.num_row_groups - 1:
            pieces.append(Piece(str(path), "parquet", first, group + 1, acc))
            first, acc = group + 1, 0
    return pieces


def _plan_arrow(path: Path, piece_bytes: int) -> list[Piece]:
    num_rows, size = _arrow_table(path).num_rows, path.stat().st_size
    if num_rows == 0:
        return [Piece(str(path), "arrow", 0, 0, 0)]
    rows = max(1, int(num_rows * piece_bytes / max(size, 1)))
    pieces = []
    for first in range(0, num_rows, rows):
        stop = min(first + rows, num_rows)
        pieces.append(Piece(str(path), "arrow", first, stop, size * (stop - first) // num_rows))
    return pieces


def iter_piece_texts(piece: Piece, text_field: str = "text") -> Iterator[str]:
    """The documents of one piece, in file order. Errors name the file (and line or row)."""
    path = Path(piece.file)
    if piece.format == "jsonl":
        yield from _jsonl_range(path, piece.start, piece.stop, text_field)
    elif piece.format in ("jsonl.gz", "jsonl.zst"):
        with _open_compressed(path, piece.format) as f:
            yield from _jsonl_lines(path, io.TextIOWrapper(f, encoding="utf-8", newline="\n"), text_field)
    elif piece.format == "parquet":
        yield from _parquet_rows(path, piece.start, piece.stop, text_field)
    elif piece.format == "arrow":
        yield from _arrow_rows(path, piece.start, piece.stop, text_field)
    elif piece.format == "text":
        try:
            yield path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    else:
        raise ValueError(f"{path}: unknown piece format {piece.format!r}")


def iter_texts(files: Iterable[str | Path], text_field: str = "text") -> Iterator[str]:
    """Every document of the files, in order (whole files, no cutting)."""
    for piece in plan_pieces(files, piece_bytes=1 << 62):
        yield from iter_piece_texts(piece, text_field)


# ------------------------------------------------------------------------------------------------ JSONL


def _row_text(row: object, text_field: str) -> str:
    """The text of one JSON row; the ValueError's message has no location (the caller adds it)."""
    if not isinstance(row, dict):
        raise ValueError(f"row is a {type(row).__name__}, not a JSON object")
    if text_field not in row:
        raise ValueError(f"row has no {text_field!r} field (keys: {sorted(row)})")
    text = row[text_field]
    if not isinstance(text, str):
        raise ValueError(f"field {text_field!r} is {type(text).__name__}, not text")
    return text


def _jsonl_lines(
    path: Path, lines: Iterable[str], text_field: str, lines_before: Callable[[], int] | None = None
) -> Iterator[str]:
    """Texts of JSONL lines; `lines_before` (called only for an error message) numbers them in the file."""
    for i, line in enumerate(lines, 1):
        if not line or line.isspace():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            where = (lines_before() if lines_before else 0) + i
            raise ValueError(f"{path}:{where}: not valid JSON ({e})") from None
        try:
            text = _row_text(row, text_field)
        except ValueError as e:
            where = (lines_before() if lines_before else 0) + i
            raise ValueError(f"{path}:{where}: {e}") from None
        yield text


def _jsonl_range(path: Path, start: int, stop: int, text_field: str) -> Iterator[str]:
    """One line-aligned byte range, read and decoded at once (json.loads of str is the fast path)."""
    with path.open("rb") as f:
        f.seek(start)
        data = f.read(stop - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 at byte {start + e.start} ({e.reason})") from None
    del data

    def lines_before() -> int:
        with path.open("rb") as f:
            return f.read(start).count(b"\n")

    # split("\n"), not splitlines(): a JSON string may hold a raw U+2028, which splitlines would cut.
    yield from _jsonl_lines(path, text.split("\n"), text_field, lines_before)


def _open_compressed(path: Path, fmt: str) -> io.BufferedIOBase:
    if fmt == "jsonl.gz":
        return gzip.open(path, "rb")
    try:
        import zstandard
    except ImportError:
        raise ValueError(
            f"{path}: reading .zst files needs the `zstandard` package (pip install zstandard)"
        ) from None
    return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(path.open("rb"), closefd=True))


# ------------------------------------------------------------------------------------ Parquet and Arrow


def _parquet_file(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for a foreign file
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None


def _text_column_check(path: Path, names: list[str], text_field: str) -> None:
    if text_field not in names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {names}); set the dataset's text_field")


def _batch_texts(path: Path, values: list, first_row: int, text_field: str) -> list[str]:
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(
                f"{path}: row {first_row + i}: column {text_field!r} is {type(value).__name__}, not text"
            )
    return values


def _parquet_rows(path: Path, first_group: int, stop_group: int, text_field: str) -> Iterator[str]:
    pf = _parquet_file(path)
    _text_column_check(path, pf.schema_arrow.names, text_field)
    row = sum(pf.metadata.row_group(g).num_rows for g in range(first_group))
    groups = list(range(first_group, stop_group))
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=[text_field]):
        yield from _batch_texts(path, batch.column(0).to_pylist(), row, text_field)
        row += batch.num_rows


def _arrow_table(path: Path):
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        pass
    try:  # Hugging Face `datasets` writes the streaming IPC format
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid as e:
        raise ValueError(f"{path}: not an Arrow IPC file or stream ({e})") from None


def _arrow_rows(path: Path, start: int, stop: int, text_field: str) -> Iterator[str]:
    table = _arrow_table(path)
    _text_column_check(path, table.column_names, text_field)
    column = table.column(text_field)
    for first in range(start, stop, _BATCH_ROWS):
        values = column.slice(first, min(_BATCH_ROWS, stop - first)).to_pylist()
        yield from _batch_texts(path, values, first, text_field)


# ------------------------------------------------------------------------------------- spike-count rows

SPIKE_COLUMN = "spike_counts"  # the Neural Pile's columns (seed-systems.md §1)
LAB_COLUMN = "source_dataset"


def piece_num_rows(piece: Piece) -> int:
    """Rows of a Parquet or Arrow piece (spike rows are numbered by their position in the split)."""
    path = Path(piece.file)
    if piece.format == "parquet":
        meta = _parquet_file(path).metadata
        return sum(meta.row_group(g).num_rows for g in range(piece.start, piece.stop))
    if piece.format == "arrow":
        return piece.stop - piece.start
    raise ValueError(f"{path}: spike-count rows are read from Parquet or Arrow files, not {piece.format}")


def iter_piece_spike_rows(
    piece: Piece, first_sample_id: int, *, need_lab: bool = False
) -> Iterator[tuple[int, object, str | None, str]]:
    """(sample id, counts, lab, "file:row") of every row of a piece, in file order.

    counts is a (neurons, bins) array, or None for a row that is not 2-D (no neurons, no bins, or rows of
    different lengths). The lab is None when the file has no `source_dataset` column, which `need_lab`
    (a lab filter is set) makes an error naming the file. Negative counts are an error naming the row.
    """
    import pyarrow as pa

    path = Path(piece.file)
    if piece.format == "parquet":
        pf = _parquet_file(path)
        names = pf.schema_arrow.names
        row = sum(pf.metadata.row_group(g).num_rows for g in range(piece.start))
    elif piece.format == "arrow":
        table = _arrow_table(path)
        names, row = table.column_names, piece.start
    else:
        raise ValueError(f"{path}: spike-count rows are read from Parquet or Arrow files, not {piece.format}")
    if SPIKE_COLUMN not in names:
        raise ValueError(f"{path}: no column {SPIKE_COLUMN!r} (columns: {names}); not spike-count rows")
    if need_lab and LAB_COLUMN not in names:
        raise ValueError(
            f"{path}: no column {LAB_COLUMN!r} (columns: {names}), so the dataset's source_dataset filter "
            "cannot apply; remove it for a single-lab dataset"
        )
    columns = [SPIKE_COLUMN] + ([LAB_COLUMN] if LAB_COLUMN in names else [])
    if piece.format == "parquet":
        groups = list(range(piece.start, piece.stop))
        batches = pf.iter_batches(batch_size=_BATCH_ROWS, row_groups=groups, columns=columns)
    else:
        part = table.select(columns).slice(piece.start, piece.stop - piece.start)
        batches = part.to_batches(max_chunksize=_BATCH_ROWS)
    sample_id = first_sample_id
    for batch in batches:
        counts_column = batch.column(0)
        labs = batch.column(1).to_pylist() if len(columns) > 1 else [None] * batch.num_rows
        if not pa.types.is_list(counts_column.type) and not pa.types.is_large_list(counts_column.type):
            raise ValueError(f"{path}: column {SPIKE_COLUMN!r} is {counts_column.type}, not a list of lists")
        for i, counts in enumerate(_spike_matrices(path, counts_column, row)):
            yield sample_id, counts, labs[i], f"{path}:{row + i}"
            sample_id += 1
        row += batch.num_rows


def _spike_matrices(path: Path, column, first_row: int) -> Iterator[object]:
    """Each row of a list<list<int>> Arrow column as a (neurons, bins) numpy view, or None if not 2-D."""
    import numpy as np
    import pyarrow as pa

    outer = column.offsets.to_numpy()
    inner_lists = column.values
    if not pa.types.is_list(inner_lists.type) and not pa.types.is_large_list(inner_lists.type):
        raise ValueError(f"{path}: column {SPIKE_COLUMN!r} is {column.type}, not a list of lists")
    inner = inner_lists.offsets.to_numpy()
    flat = inner_lists.values.to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    for i in range(len(column)):
        a, b = int(outer[i]), int(outer[i + 1])
        lengths = np.diff(inner[a : b + 1])
        if not valid[i] or b == a or lengths[0] == 0 or np.any(lengths != lengths[0]):
            yield None
            continue
        counts = flat[inner[a] : inner[b]].reshape(b - a, int(lengths[0]))
        if counts.dtype != np.uint8:
            if counts.size and int(counts.min()) < 0:
                raise ValueError(f"{path}: row {first_row + i}: negative spike count {int(counts.min())}")
            counts = np.minimum(counts, 255).astype(np.uint8)
        yield counts


def lab_counts(path: str | Path) -> dict[str, int] | None:
    """Rows per `source_dataset` value of one Parquet/Arrow file (reading that column only); None when
    the file has no such column."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = file_format(path)
    if fmt == "parquet":
        if LAB_COLUMN not in _parquet_file(path).schema_arrow.names:
            return None
        column = pq.read_table(path, columns=[LAB_COLUMN]).column(0)
    elif fmt == "arrow":
        table = _arrow_table(path)
        if LAB_COLUMN not in table.column_names:
            return None
        column = table.column(LAB_COLUMN)
    else:
        raise ValueError(f"{path}: spike-count rows are read from Parquet or Arrow files, not {fmt}")
    return {str(c["values"]): int(c["counts"]) for c in pc.value_counts(column).to_pylist()}
