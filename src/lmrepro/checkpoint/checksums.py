"""Checkpoint checksums: ``checksums.json`` lists the size and xxh3-128 digest of every other file of a
checkpoint folder (DCP's ``.distcp`` files and ``.metadata``, meta.json, extra files). It is written
last, in the hidden temp folder, just before the folder is renamed into place; loading verifies it
first, so a truncated ``.distcp``, a deleted ``.metadata`` or garbled bytes are a one-line error naming
the file instead of a traceback from deep inside DCP (or, worse, wrong weights).

xxh3-128 rather than sha256: this guards against damage, not an adversary, and it runs near memory speed
(benchmarks/integrity/: several GB/s where sha256 makes verifying cost more than the load it guards).
Hashing is split over the ranks (rank r hashes files r, r + world, …) and the results are gathered, so a
save or a load costs each rank about (checkpoint bytes / world) of hashing; a folder verified once in a
process is not hashed again (export reads a checkpoint tensor by tensor through several entry points).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch.distributed as dist
import xxhash

from lmrepro.io import write_json

log = logging.getLogger(__name__)

MANIFEST = "checksums.json"
ALGORITHM = "xxh3_128"
_verified: set[tuple[str, int]] = set()  # (folder, manifest mtime_ns) verified in this process


class CorruptCheckpoint(ValueError):
    """A checkpoint file is missing, truncated or does not match its recorded checksum."""


def _rank_and_world(group=None) -> tuple[int, int]:
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def checkpoint_files(folder: Path) -> list[str]:
    """The names of the folder's files that a manifest covers, sorted (the same list on every rank)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)


def file_digest(path: Path, chunk_bytes: int = 8 << 20) -> str:
    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(folder: Path, names: list[str]) -> dict[str, dict]:
    return {n: {"bytes": (folder / n).stat().st_size, ALGORITHM: file_digest(folder / n)} for n in names}


def hash_share(folder: Path, names: list[str], group=None) -> dict[str, dict]:
    """This rank's share of ``names`` hashed (no collective: the async save hashes in a background thread)."""
    rank, world = _rank_and_world(group)
    return hash_files(folder, names[rank::world])


def gather(share: dict, group=None) -> dict:
    """The union of every rank's dict (collective when a process group exists)."""
    if not dist.is_initialized():
        return dict(share)
    shares: list[dict | None] = [None] * dist.get_world_size(group)
    dist.all_gather_object(shares, share, group=group)
    return {k: v for s in shares for k, v in (s or {}).items()}


def write_manifest(folder: Path, hashed: dict[str, dict]) -> None:
    """Rank 0, last thing before the rename: hash what ``hashed`` lacks (meta.json, extra files) and write
    MANIFEST atomically."""
    names = checkpoint_files(folder)
    files = {**hashed, **hash_files(folder, [n for n in names if n not in hashed])}
    missing = sorted(set(files) - set(names))
    if missing:
        raise CorruptCheckpoint(f"{folder / missing[0]} vanished while its checkpoint was being saved")
    write_json(folder / MANIFEST, {"algorithm": ALGORITHM, "files": {n: files[n] for n in names}})


def read_info(folder: Path) -> dict:
    """A checkpoint's meta.json (``dcp.CHECKPOINT_INFO``); unreadable JSON is a CorruptCheckpoint."""
    path = folder / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a complete lmrepro checkpoint (no meta.json)")
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpoint(f"{path} is not valid JSON ({e}); the checkpoint is corrupted") from None
    if not isinstance(info, dict):
        raise CorruptCheckpoint(f"{path} holds a {type(info).__name__}, not a checkpoint's info")
    return info


def _problems(folder: Path, manifest: dict, names: list[str]) -> list[str]:
    found = []
    for name in names:
        path, want = folder / name, manifest[name]
        if not path.is_file():
            found.append(f"{path} is missing (listed in {folder / MANIFEST})")
        elif (size := path.stat().st_size) != want["bytes"]:
            found.append(f"{path} is {size} bytes, {folder / MANIFEST} recorded {want['bytes']} (truncated?)")
        elif file_digest(path) != want[ALGORITHM]:
            found.append(
                f"{path}: {ALGORITHM} digest does not match {folder / MANIFEST}; the file is corrupted"
            )
    return found


def verify(folder: str | Path, group=None) -> None:
    """Raise CorruptCheckpoint naming the first bad file; collective when a process group exists (every
    rank hashes its share and all ranks reach the same verdict). A folder saved before lmrepro recorded
    checksums (no MANIFEST, and meta.json does not name one) is loaded with a warning."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if read_info(folder).get("checksums") != MANIFEST:
            log.warning("%s has no %s (saved by an older lmrepro): not verified", folder, MANIFEST)
            return
        raise CorruptCheckpoint(f"{manifest_path} is missing: the checkpoint cannot be verified")
    key = (str(folder.resolve()), manifest_path.stat().st_mtime_ns)
    if key in _verified:
        return
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest["algorithm"] != ALGORITHM or not all(
            {"bytes", ALGORITHM} <= set(f) for f in files.values()
        ):
            raise ValueError(f"algorithm {manifest['algorithm']!r}, this lmrepro checks {ALGORITHM}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptCheckpoint(f"{manifest_path} is not a valid checksum manifest ({e})") from None
    rank, world = _rank_and_world(group)
    names = sorted(files)
    problems = gather({rank: _problems(folder, files, names[rank::world])}, group)
    first = [p for r in sorted(problems) for p in problems[r]]
    if first:
        raise CorruptCheckpoint(first[0])
    _verified.add(key)
