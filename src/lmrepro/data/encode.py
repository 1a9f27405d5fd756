"""Encode documents into binary token shards (BOS + text + EOS per document), in parallel and restartable.

The input files are cut into pieces (``data/readers.py``); each piece becomes one shard, encoded by a pool
of ``num_proc`` processes. Shards are written to an undeclared work folder next to the output
(``.work-<split>/``) with a small record each (tokens, documents, sha256, and a key of its input piece and
the tokenizer). Snakemake deletes the declared output of a failed job, but not the work folder: a rerun
keeps every shard whose key and checksum still match and encodes only the rest. When all pieces are done
the shards move into the output folder and the index file is written last, so its presence marks a complete
folder.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np

from lmrepro.data.readers import Piece, iter_piece_texts, plan_pieces
from lmrepro.data.shards import INDEX_FILE, dtype_for_vocab, read_header, read_index, write_index, write_shard
from lmrepro.data.tokenizer import TextTokenizer, load_tokenizer
from lmrepro.io import file_sha256, write_json

log = logging.getLogger(__name__)

SHARD_KEY_VERSION = 1  # bump when the same piece and tokenizer would give other tokens
DEFAULT_PIECE_BYTES = 64 << 20  # about 16M tokens of English text per shard
LOG_EVERY_S = 60.0


def tokenize_to_shards(
    input_files: list[str | Path],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    text_field: str = "text",
    piece_bytes: int = DEFAULT_PIECE_BYTES,
    num_proc: int = 1,
    work_dir: str | Path | None = None,
    batch_documents: int = 1024,
) -> dict:
    """Tokenize the documents of data files into one shard per piece of about `piece_bytes` input bytes.

    Returns {"num_documents", "num_tokens", "num_shards"}. `work_dir` defaults to `.work-<out_dir name>`
    next to `out_dir`; it survives a failure and is removed after success.
    """
    # num_proc is the core budget: every encoder runs single-threaded (no hidden `tokenizers` threads).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    files = [Path(f) for f in input_files]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"input file {f} does not exist")
    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.parent / f".work-{out_dir.name}"
    tok = load_tokenizer(tokenizer_dir)
    pieces = plan_pieces(files, piece_bytes)
    keys = _piece_keys(pieces, tok, text_field)
    work.mkdir(parents=True, exist_ok=True)
    records = _kept_records(work, keys)
    todo = [i for i in range(len(pieces)) if i not in records]
    total_bytes = sum(p.num_bytes for p in pieces)
    log.info(
        "tokenizing %d files (%.1f MB) as %d pieces with %d processes; %d shards kept from a failed attempt",
        len(files), total_bytes / 1e6, len(pieces), min(num_proc, max(len(todo), 1)), len(records),
    )  # fmt: skip
    progress = _Progress(len(pieces), records)
    jobs = [(i, keys[i], pieces[i], work, text_field, batch_documents) for i in todo]
    if num_proc > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold tokenizer threads
        init = (str(tokenizer_dir),)
        with cf.ProcessPoolExecutor(min(num_proc, len(jobs)), ctx, _init_worker, init) as pool:
            futures = [pool.submit(_encode_piece_job, *job) for job in jobs]
            try:
                for future in cf.as_completed(futures):
                    progress.done(future.result())
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    else:
        for job in jobs:
            progress.done(_encode_piece(tok, *job))
    records = progress.records

    num_documents = sum(r["num_documents"] for r in records.values())
    if num_documents == 0:
        shutil.rmtree(work)
        raise ValueError(f"no documents in {[str(f) for f in files]}: the dataset is empty")
    shards = _publish(work, out_dir, [records[i] for i in range(len(pieces))])
    write_index(
        out_dir,
        shards,
        vocab_size=tok.vocab_size,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        tokenizer_sha256=tok.sha256,
        source={"files": [str(f) for f in files], "tokenizer": str(tokenizer_dir), "text_field": text_field},
    )
    shutil.rmtree(work)
    num_tokens = sum(s["num_tokens"] for s in shards)
    log.info(
        "done: %d documents, %d tokens in %d shards → %s", num_documents, num_tokens, len(shards), out_dir
    )
    return {"num_documents": num_documents, "num_tokens": num_tokens, "num_shards": len(shards)}


def split_files(raw_dir: str | Path, split: str) -> tuple[list[Path], str]:
    """The data files and text field of one split of a prepared dataset (raw/manifest.json)."""
    raw_dir = Path(raw_dir)
    manifest_file = raw_dir / "manifest.json"
    if not manifest_file.is_file():
        raise FileNotFoundError(f"{manifest_file} does not exist (run the prepare_dataset step first)")
    manifest = json.loads(manifest_file.read_text())
    splits = manifest.get("splits") or {Path(f).stem: {"files": [f]} for f in manifest.get("files", {})}
    if split not in splits:
        raise ValueError(f"{raw_dir}: the dataset has no split {split!r}; valid: {sorted(splits)}")
    return [raw_dir / f for f in splits[split]["files"]], manifest.get("text_field", "text")


def check_shards_match_tokenizer(index_path: str | Path, tokenizer_dir: str | Path) -> dict:
    """Shards are only valid with the tokenizer that wrote them: compare their index with the tokenizer."""
    index = read_index(index_path)
    tok = load_tokenizer(tokenizer_dir)
    ours = {
        "tokenizer_sha256": tok.sha256,
        "vocab_size": tok.vocab_size,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
    }
    differ = {k: (index.get(k), v) for k, v in ours.items() if index.get(k) != v}
    if differ:
        details = "; ".join(f"{k}: shards {a!r}, tokenizer {b!r}" for k, (a, b) in differ.items())
        raise ValueError(
            f"{index_path} was written with another tokenizer than {tokenizer_dir} ({details}); "
            "re-run the tokenize step for this tokenizer"
        )
    return index


# ------------------------------------------------------------------------------------ finished pieces


def _piece_keys(pieces: list[Piece], tok: TextTokenizer, text_field: str) -> list[str]:
    """What each shard depends on: its piece of its file (as it is now) and the tokenizer."""
    common = [SHARD_KEY_VERSION, text_field, tok.sha256, tok.bos_id, tok.eos_id]
    keys = []
    for piece in pieces:
        stat = Path(piece.file).stat()
        identity = [*common, piece.to_dict(), stat.st_size, stat.st_mtime_ns]
        keys.append(hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest())
    return keys


def _record_path(work: Path, i: int) -> Path:
    return work / f"piece-{i:05d}.json"


def _kept_records(work: Path, keys: list[str]) -> dict[int, dict]:
    """Records of pieces finished earlier, for the same input and tokenizer, whose shard is complete."""
    kept = {}
    for i, key in enumerate(keys):
        path = _record_path(work, i)
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if record.get("key") != key:
            log.info("%s was made from other input or another tokenizer; encoding piece %d again", path, i)
            continue
        if record["num_documents"] == 0:
            kept[i] = record
            continue
        shard = work / record["file"]
        try:
            ok = (
                read_header(shard).num_tokens == record["num_tokens"]
                and file_sha256(shard) == record["sha256"]
            )
        except (ValueError, FileNotFoundError):
            ok = False
        if ok:
            kept[i] = record
        else:
            log.info("%s is incomplete or corrupted; encoding piece %d again", shard, i)
    return kept


# ------------------------------------------------------------------------------------------ encoding

_WORKER_TOKENIZER: TextTokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    from lmrepro.logs import setup_logging

    setup_logging()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process: num_proc is the core budget
    _WORKER_TOKENIZER = load_tokenizer(tokenizer_dir)


def _encode_piece_job(
    i: int, key: str, piece: Piece, work: Path, text_field: str, batch_documents: int
) -> dict:
    assert _WORKER_TOKENIZER is not None
    return _encode_piece(_WORKER_TOKENIZER, i, key, piece, work, text_field, batch_documents)


def _encode_piece(
    tok: TextTokenizer, i: int, key: str, piece: Piece, work: Path, text_field: str, batch_documents: int
) -> dict:
    """Encode one piece into work/shard-<i>.bin, then write its record (the record marks it done)."""
    started = last_log = time.monotonic()
    prefix = [tok.bos_id] if tok.bos_id is not None else []
    shard = work / f"shard-{i:05d}.bin"
    dtype = dtype_for_vocab(tok.vocab_size)
    parts: list[np.ndarray] = []
    batch: list[str] = []
    num_documents = 0

    def flush() -> None:
        flat: list[int] = []
        for ids in tok.encode_batch(batch):
            flat += prefix
            flat += ids
            flat.append(tok.eos_id)
        tokens = np.asarray(flat, dtype=np.int64)
        if tokens.size and (int(tokens.max()) >= tok.vocab_size or int(tokens.min()) < 0):
            bad = int(tokens.max()) if int(tokens.max()) >= tok.vocab_size else int(tokens.min())
            raise ValueError(
                f"{shard} (from {piece.describe()}): token id {bad} out of range for vocab_size "
                f"{tok.vocab_size} (ids must be in [0, {tok.vocab_size}))"
            )
        parts.append(tokens.astype(dtype))  # checked, so narrowing to the shard dtype is exact
        batch.clear()

    for text in iter_piece_texts(piece, text_field):
        batch.append(text)
        num_documents += 1
        if len(batch) == batch_documents:
            flush()
            if time.monotonic() - last_log > LOG_EVERY_S:
                last_log = time.monotonic()
                log.info("piece %d (%s): %d documents so far", i, piece.describe(), num_documents)
    if batch:
        flush()
    record = {"piece": i, "key": key, "file": shard.name, "num_documents": num_documents, "num_tokens": 0}
    if num_documents:
        tokens = np.concatenate(parts)
        del parts[:]
        record["sha256"] = write_shard(shard, tokens, vocab_size=tok.vocab_size, num_documents=num_documents)
        record["num_tokens"] = int(tokens.size)
    record["seconds"] = round(time.monotonic() - started, 3)
    write_json(_record_path(work, i), record, indent=None)
    return record


class _Progress:
    """Progress log lines: pieces done, tokens so far and throughput since the start of this attempt."""

    def __init__(self, num_pieces: int, kept: dict[int, dict]):
        self.num_pieces = num_pieces
        self.records = dict(kept)
        self.started = time.monotonic()
        self.new_tokens = 0

    def done(self, record: dict) -> None:
        self.records[record["piece"]] = record
        self.new_tokens += record["num_tokens"]
        elapsed = max(time.monotonic() - self.started, 1e-9)
        total = sum(r["num_tokens"] for r in self.records.values())
        log.info(
            "piece %d/%d done (%s: %d documents, %d tokens, %.1f s) | %d tokens in total, %.0f tokens/s",
            len(self.records), self.num_pieces, record["file"], record["num_documents"], record["num_tokens"],
            record["seconds"], total, self.new_tokens / elapsed,
        )  # fmt: skip


def _publish(work: Path, out_dir: Path, records: list[dict]) -> list[dict]:
    """Move the non-empty shards into out_dir as shard-00000.bin, shard-00001.bin, … (input order)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("shard-*.bin"), out_dir / INDEX_FILE]:
        stale.unlink(missing_ok=True)
    shards = []
    for record in records:
        if record["num_documents"] == 0:
            continue
        name = f"shard-{len(shards):05d}.bin"
        os.replace(work / record["file"], out_dir / name)
        shards.append(
            {
                "file": name,
                "num_tokens": record["num_tokens"],
                "num_documents": record["num_documents"],
                "sha256": record["sha256"],
            }
        )
    return shards
