"""File-system plumbing shared by every stage: folders that appear atomically, JSON written atomically, and
file checksums. A killed job never leaves an output that a later step would take as complete.
"""

from __future__ import annotations

import errno
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


FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write failed for want of space (or quota); the message names what was being written."""


def _raised_for_space(exc: BaseException) -> bool:
    """Whether ENOSPC/EDQUOT/EFBIG is anywhere in an exception, its causes, or (DCP's CheckpointException)
    the failures it collected from every rank."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in FULL_DISK_ERRNOS:
            return True
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            todo += [f[0] if isinstance(f, tuple) else f for f in failures.values()]
        todo += [e.__cause__, e.__context__]
    return False


def free_bytes(path: str | Path) -> int:
    return shutil.disk_usage(path).free


@contextmanager
def full_disk_explained(target: str | Path, partial: str | Path, needed_bytes: int) -> Iterator[None]:
    """Turn a write into `partial` (the folder that becomes `target`) that failed for want of space into a
    DiskFullError naming `target`, after deleting `partial` so that its bytes are free again.

    Not every writer keeps the errno (torch.save reports a short write as a RuntimeError), so a failure
    also counts as a full disk when less than `needed_bytes` (what was to be written) is left free.
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # DCP's CheckpointException is a BaseException
        partial = Path(partial)
        free = free_bytes(partial.parent if not partial.exists() else partial)
        if not (_raised_for_space(exc) or free < needed_bytes):
            raise
        shutil.rmtree(partial, ignore_errors=True)
        total = shutil.disk_usage(Path(partial).parent).total
        raise DiskFullError(
            f"{target}: no space left on the device while writing it (about {needed_bytes / 2**20:.1f} MiB "
            f"needed, {free / 2**20:.1f} MiB of {total / 2**20:.1f} MiB free); what was written before it is "
            "intact: free space and rerun",
        ) from exc
