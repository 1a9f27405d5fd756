"""Encode documents into binary token shards, in parallel and restartable: text (documents joined by the
dataset's packing, ``data/packing.py``: BOS + text + EOS by default) or spike-count rows (byte or patch
tokens per row, no boundary token), by the encoder that the tokenizer folder calls for.

The input files are cut into pieces (``data/readers.py``); each piece becomes one shard, encoded by a pool
of ``num_proc`` processes. Shards are written to an undeclared work folder next to the output
(``.work-<split>/``) with a small record each (tokens, documents, sha256, and a key of its input piece and
the tokenizer). Snakemake deletes the declared output of a failed job, but not the work folder: a rerun
keeps every shard whose key and checksum still match and encodes only the rest. When all pieces are done
the shards move into the output folder and the index file is written last, so its presence marks a complete
folder. For spike rows the index also records what the rows were (`spikes`: rows read, kept, of other
labs, not 2-D with the first few named, counts clipped or patches unknown).
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
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmrepro.data.packing import DEFAULT_PACKING, Packing, pack
from lmrepro.data.readers import Piece, iter_piece_spike_rows, iter_piece_texts, piece_num_rows, plan_pieces
from lmrepro.data.shards import INDEX_FILE, dtype_for_vocab, read_header, read_index, write_index, write_shard
from lmrepro.data.sources import split_files  # noqa: F401 (re-exported: callers read a split here)
from lmrepro.data.spike_tokenizer import is_spike_tokenizer, load_any_tokenizer, load_spike_tokenizer
from lmrepro.data.spikes import SpikeRows, merge_row_stats, new_row_stats, select_rows
from lmrepro.data.tokenizer import TextTokenizer, load_tokenizer
from lmrepro.io import file_sha256, write_json

log = logging.getLogger(__name__)

SHARD_KEY_VERSION = 2  # bump when the same piece and tokenizer would give other tokens
DEFAULT_PIECE_BYTES = 64 << 20  # about 16M tokens of English text per shard
LOG_EVERY_S = 60.0


def tokenize_to_shards(
    input_files: list[str | Path],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    text_field: str = "text",
    spike_rows: SpikeRows | None = None,
    packing: Packing = DEFAULT_PACKING,
    piece_bytes: int = DEFAULT_PIECE_BYTES,
    num_proc: int = 1,
    work_dir: str | Path | None = None,
    batch_documents: int = 1024,
) -> dict:
    """Tokenize the documents of data files into one shard per piece of about `piece_bytes` input bytes.

    A spike tokenizer folder (spike_tokenizer.json) reads spike-count rows, selected and shaped by
    `spike_rows` (the dataset's lab filter and n_fixed); a text tokenizer reads `text_field` and joins the
    documents by `packing` (recorded in index.json; spike rows take the default only).
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
    encoder_args = (str(tokenizer_dir), text_field, spike_rows, batch_documents, packing)
    encoder = make_encoder(*encoder_args)
    pieces = plan_pieces(files, piece_bytes)
    first_rows = encoder.first_sample_ids(pieces)
    keys = _piece_keys(pieces, encoder)
    work.mkdir(parents=True, exist_ok=True)
    records = _kept_records(work, keys)
    todo = [i for i in range(len(pieces)) if i not in records]
    total_bytes = sum(p.num_bytes for p in pieces)
    log.info(
        "tokenizing %d files (%.1f MB) as %d pieces with %d processes; %d shards kept from a failed attempt",
        len(files), total_bytes / 1e6, len(pieces), min(num_proc, max(len(todo), 1)), len(records),
    )  # fmt: skip
    progress = _Progress(len(pieces), records)
    jobs = [(i, keys[i], pieces[i], first_rows[i], work) for i in todo]
    if num_proc > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold tokenizer threads
        with cf.ProcessPoolExecutor(min(num_proc, len(jobs)), ctx, _init_worker, encoder_args) as pool:
            futures = [pool.submit(_encode_piece_job, *job) for job in jobs]
            try:
                for future in cf.as_completed(futures):
                    progress.done(future.result())
            except BaseException:
                pool.shutdown(cancel_futures=True)
                raise
    else:
        for job in jobs:
            progress.done(_encode_piece(encoder, *job))
    records = progress.records

    num_documents = sum(r["num_documents"] for r in records.values())
    ordered = [records[i] for i in range(len(pieces))]
    stats = encoder.index_stats(ordered)
    if num_documents == 0:
        shutil.rmtree(work)
        detail = f" ({json.dumps(stats)})" if stats else ""
        raise ValueError(f"no documents in {[str(f) for f in files]}: the dataset is empty{detail}")
    shards = _publish(work, out_dir, ordered)
    source = {"files": [str(f) for f in files], "tokenizer": str(tokenizer_dir), **encoder.source()}
    write_index(
        out_dir,
        shards,
        vocab_size=encoder.vocab_size,
        bos_id=encoder.bos_id,
        eos_id=encoder.eos_id,
        tokenizer_sha256=encoder.sha256,
        source=source,
        extra={"spikes": stats} if stats else encoder.index_extra(),
    )
    shutil.rmtree(work)
    num_tokens = sum(s["num_tokens"] for s in shards)
    log.info(
        "done: %d documents, %d tokens in %d shards → %s", num_documents, num_tokens, len(shards), out_dir
    )
    if stats:
        log.info("spike rows: %s", json.dumps(stats))
    return {"num_documents": num_documents, "num_tokens": num_tokens, "num_shards": len(shards)}


def check_shards_match_tokenizer(index_path: str | Path, tokenizer_dir: str | Path) -> dict:
    """Shards are only valid with the tokenizer that wrote them: compare their index with the tokenizer."""
    index = read_index(index_path)
    tok = load_any_tokenizer(tokenizer_dir)
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


# ------------------------------------------------------------------------------------------ encoders


class TextEncoder:
    """Documents of a text field, joined by a packing mode (BOS + tokens + EOS each by default)."""

    def __init__(self, tok: TextTokenizer, text_field: str, batch_documents: int, packing=DEFAULT_PACKING):
        self.tok, self.text_field, self.batch_documents = tok, text_field, batch_documents
        self.packing = packing
        self.prefix, self.suffix = packing.frame(tok)
        self.vocab_size, self.bos_id, self.eos_id, self.sha256 = (
            tok.vocab_size,
            tok.bos_id,
            tok.eos_id,
            tok.sha256,
        )

    def identity(self) -> list:
        return [self.text_field, self.sha256, self.bos_id, self.eos_id, self.index_extra()]

    def source(self) -> dict:
        return {"text_field": self.text_field}

    def index_extra(self) -> dict:
        return {"packing": {**self.packing.to_dict(), "prefix_ids": self.prefix, "suffix_ids": self.suffix}}

    def first_sample_ids(self, pieces: list[Piece]) -> list[int]:
        return [0] * len(pieces)

    def index_stats(self, records: list[dict]) -> dict | None:
        return None

    def encode_piece(self, piece: Piece, first_row: int, stats: dict) -> Iterator[tuple[np.ndarray, int]]:
        batch: list[str] = []

        def flush() -> tuple[np.ndarray, int]:
            flat = pack(self.tok.encode_batch(batch), self.prefix, self.suffix)
            done = len(batch)
            batch.clear()
            return np.asarray(flat, dtype=np.int64), done

        for text in iter_piece_texts(piece, self.text_field):
            batch.append(text)
            if len(batch) == self.batch_documents:
                yield flush()
        if batch:
            yield flush()


class SpikeEncoder:
    """Spike-count rows (a document each): lab filter, n_fixed, then byte or patch tokens."""

    def __init__(self, tok, spec: SpikeRows):
        self.tok, self.spec = tok, spec
        self.vocab_size, self.bos_id, self.eos_id, self.sha256 = tok.vocab_size, None, None, tok.sha256

    def identity(self) -> list:
        return ["spikes", self.sha256, self.spec.to_dict()]

    def source(self) -> dict:
        return {"kind": "spikes", "rows": self.spec.to_dict(), "tokenizer_mode": self.tok.mode}

    def first_sample_ids(self, pieces: list[Piece]) -> list[int]:
        """Each piece's first row's index in the split (the sample id that keys the n_fixed crop)."""
        starts, total = [], 0
        for piece in pieces:
            starts.append(total)
            total += piece_num_rows(piece)
        return starts

    def index_extra(self) -> None:
        return None

    def index_stats(self, records: list[dict]) -> dict:
        counted = {"counts_clipped": 0} if self.tok.mode == "bytes" else {"patches": 0, "unk_patches": 0}
        total = {**new_row_stats(), **counted}
        for record in records:
            merge_row_stats(total, record.get("spikes", {}))
        return total

    def encode_piece(self, piece: Piece, first_row: int, stats: dict) -> Iterator[tuple[np.ndarray, int]]:
        stats.update(new_row_stats())
        rows = iter_piece_spike_rows(piece, first_row, need_lab=self.spec.source_dataset is not None)
        for _, counts in select_rows(rows, self.spec, stats):
            tokens, counted = self.tok.encode_row(counts)
            merge_row_stats(stats, counted)
            yield tokens, 1
        for where in stats["not_2d_examples"]:
            log.warning("skipped spike row %s: not a 2-D (neurons x bins) matrix", where)


def make_encoder(
    tokenizer_dir: str,
    text_field: str,
    spike_rows: SpikeRows | None,
    batch_documents: int,
    packing: Packing = DEFAULT_PACKING,
):
    """The encoder a tokenizer folder calls for; a spike tokenizer on text (or the reverse) is refused."""
    if is_spike_tokenizer(tokenizer_dir):
        if packing != DEFAULT_PACKING:
            raise ValueError(f"packing = {packing.mode!r}: spike rows are concatenated as they are")
        return SpikeEncoder(load_spike_tokenizer(tokenizer_dir), spike_rows or SpikeRows())
    if spike_rows is not None:
        raise ValueError(
            f"{tokenizer_dir} is a text tokenizer, but the dataset holds spike-count rows; use a tokenizer "
            "of kind spike_bytes or spike_patch"
        )
    return TextEncoder(load_tokenizer(tokenizer_dir), text_field, batch_documents, packing)


# ------------------------------------------------------------------------------------ finished pieces


def _piece_keys(pieces: list[Piece], encoder) -> list[str]:
    """What each shard depends on: its piece of its file (as it is now), the tokenizer and the encoding."""
    common = [SHARD_KEY_VERSION, *encoder.identity()]
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

_WORKER_ENCODER = None


def _init_worker(*encoder_args) -> None:
    global _WORKER_ENCODER
    from lmrepro.logs import setup_logging

    setup_logging()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process: num_proc is the core budget
    _WORKER_ENCODER = make_encoder(*encoder_args)


def _encode_piece_job(i: int, key: str, piece: Piece, first_row: int, work: Path) -> dict:
    assert _WORKER_ENCODER is not None
    return _encode_piece(_WORKER_ENCODER, i, key, piece, first_row, work)


def _encode_piece(encoder, i: int, key: str, piece: Piece, first_row: int, work: Path) -> dict:
    """Encode one piece into work/shard-<i>.bin, then write its record (the record marks it done)."""
    started = last_log = time.monotonic()
    shard = work / f"shard-{i:05d}.bin"
    vocab_size = encoder.vocab_size
    dtype = dtype_for_vocab(vocab_size)
    parts: list[np.ndarray] = []
    num_documents = 0
    stats: dict = {}
    for tokens, documents in encoder.encode_piece(piece, first_row, stats):
        if tokens.size and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
            bad = int(tokens.max()) if int(tokens.max()) >= vocab_size else int(tokens.min())
            raise ValueError(
                f"{shard} (from {piece.describe()}): token id {bad} out of range for vocab_size "
                f"{vocab_size} (ids must be in [0, {vocab_size}))"
            )
        parts.append(tokens.astype(dtype, copy=False))  # checked, so narrowing to the shard dtype is exact
        num_documents += documents
        if time.monotonic() - last_log > LOG_EVERY_S:
            last_log = time.monotonic()
            log.info("piece %d (%s): %d documents so far", i, piece.describe(), num_documents)
    record = {"piece": i, "key": key, "file": shard.name, "num_documents": num_documents, "num_tokens": 0}
    if stats:
        record["spikes"] = stats
    if num_documents:
        tokens = np.concatenate(parts)
        del parts[:]
        record["sha256"] = write_shard(shard, tokens, vocab_size=vocab_size, num_documents=num_documents)
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
