"""A quick look at a data file before any job reads it: its format is known, it is not empty, its first
chunk is UTF-8 and its first row has the text field (Parquet and Arrow: the column, from the schema).

Cheap on purpose — the first 64 KiB of a JSONL or text file, the metadata of a Parquet file, the schema of
an Arrow file — so that the workflow runs it on every local data file while it builds the DAG. A file
that passes can still be bad further down; the tokenize step names the line or row then.
"""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

from lmrepro.data.readers import SPIKE_COLUMN, _row_text, file_format

FIRST_CHUNK_BYTES = 64 * 1024


def peek_data_file(path: str | Path, text_field: str | None = "text", kind: str = "text") -> None:
    """Raise ValueError naming `path` if it is of an unknown format, empty, not UTF-8 at the start, or its
    first row lacks `text_field` (None: any JSON object, e.g. a multiple-choice example; `kind` spikes: a
    Parquet/Arrow file with a spike_counts column)."""
    path = Path(path)
    fmt = file_format(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    column = SPIKE_COLUMN if kind == "spikes" else text_field
    if kind == "spikes" and fmt not in ("parquet", "arrow"):
        raise ValueError(f"{path}: spike-count rows are read from Parquet or Arrow files, not {fmt}")
    if fmt == "parquet":
        _peek_parquet(path, column)
    elif fmt == "arrow":
        _peek_arrow(path, column)
    elif fmt == "jsonl":
        with path.open("rb") as f:
            _peek_jsonl(path, f.read(FIRST_CHUNK_BYTES), text_field)
    elif fmt == "jsonl.gz":
        try:
            with gzip.open(path, "rb") as f:
                chunk = f.read(FIRST_CHUNK_BYTES)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable gzip file ({e})") from None
        _peek_jsonl(path, chunk, text_field)
    elif fmt == "text":
        with path.open("rb") as f:
            _first_text(path, f.read(FIRST_CHUNK_BYTES))
    # jsonl.zst: decompressing needs the optional zstandard package; the tokenize step reads it


def _first_text(path: Path, chunk: bytes) -> str:
    """The chunk decoded as UTF-8 (a character cut at the chunk's end is not an error)."""
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(chunk, final=False)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 at byte {e.start} ({e.reason})") from None


def _peek_jsonl(path: Path, chunk: bytes, text_field: str | None) -> None:
    text = _first_text(path, chunk)
    lines = text.split("\n")
    complete = lines if len(chunk) < FIRST_CHUNK_BYTES else lines[:-1]
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e})") from None
        try:
            if text_field is None and not isinstance(row, dict):
                raise ValueError(f"row is a {type(row).__name__}, not a JSON object")
            if text_field is not None:
                _row_text(row, text_field)
        except ValueError as e:
            raise ValueError(f"{path}:{number}: {e}; set the dataset's text_field") from None
        return
    if len(chunk) < FIRST_CHUNK_BYTES:
        raise ValueError(f"{path}: no rows (only blank lines)")


def _peek_parquet(path: Path, column: str) -> None:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError subclasses for a foreign file
        raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
    _has_column(path, parquet.schema_arrow.names, column)
    if parquet.metadata.num_rows == 0:
        raise ValueError(f"{path}: the file has no rows")


def _peek_arrow(path: Path, column: str) -> None:
    import pyarrow as pa

    with pa.memory_map(str(path), "r") as source:
        try:
            schema = pa.ipc.open_file(source).schema
        except pa.ArrowInvalid:
            source.seek(0)
            try:  # Hugging Face `datasets` writes the streaming IPC format
                schema = pa.ipc.open_stream(source).schema
            except pa.ArrowInvalid as e:
                raise ValueError(f"{path}: not an Arrow IPC file or stream ({e})") from None
    _has_column(path, schema.names, column)


def _has_column(path: Path, names: list[str], column: str | None) -> None:
    if column is not None and column not in names:
        fix = "not spike-count rows" if column == SPIKE_COLUMN else "set the dataset's text_field"
        raise ValueError(f"{path}: no column {column!r} (columns: {names}); {fix}")
