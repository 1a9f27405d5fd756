"""File-system plumbing shared by every stage: folders that appear atomically, JSON written atomically, and
file checksums. A killed job never leaves an output that a later step would take as complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(path: str | Path) -> Path:
    """The hidden sibling an output is built in before it is renamed into place."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


@contextmanager
def atomic_folder(out_dir: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Build a folder in ``.name.partial`` and rename it to ``out_dir`` when the block ends without error.

    On an exception the partial folder is removed and ``out_dir`` is left as it was. ``replace=False``
    refuses to overwrite an existing ``out_dir`` (FileExistsError before anything is written).
    """
    out_dir = Path(out_dir)
    if not replace and out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; refusing to overwrite it")
    tmp = partial_path(out_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, out_dir)


def move_into_place(tmp: str | Path, out_dir: str | Path) -> None:
    """Rename a finished partial folder to its final name, replacing an older folder of that name."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def write_json(path: str | Path, record: object, *, indent: int | None = 2, sort_keys: bool = False) -> None:
    """Write JSON atomically (a partial sibling, then rename), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    tmp.write_text(json.dumps(record, indent=indent, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> object:
    return json.loads(Path(path).read_text())


def file_sha256(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()
