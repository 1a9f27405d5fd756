"""Encode JSONL documents into binary token shards (BOS + text + EOS per document)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from lmrepro.data.shards import dtype_for_vocab, write_index, write_shard
from lmrepro.data.tokenizer import iter_jsonl_texts, load_tokenizer

log = logging.getLogger(__name__)


def _batches(texts, size: int):
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_to_shards(
    input_files: list[str | Path],
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    *,
    shard_tokens: int = 1 << 24,
    batch_documents: int = 1024,
    log_every_s: float = 10.0,
) -> dict:
    """Tokenize the `text` field of JSONL files into shards of about `shard_tokens` tokens each.

    Shards are cut at document boundaries; index.json is written last so its presence marks a
    complete folder. Returns the index.
    """
    for f in input_files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"input file {f} does not exist")
    tok = load_tokenizer(tokenizer_dir)
    dtype = dtype_for_vocab(tok.vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = [tok.bos_id] if tok.bos_id is not None else []

    shards: list[dict] = []
    pending: list[np.ndarray] = []
    pending_tokens = pending_docs = total_docs = total_tokens = 0
    started = last_log = time.monotonic()

    def flush() -> None:
        nonlocal pending, pending_tokens, pending_docs
        name = f"shard-{len(shards):05d}.bin"
        tokens = np.concatenate(pending) if pending else np.empty(0, dtype=dtype)
        digest = write_shard(out_dir / name, tokens, vocab_size=tok.vocab_size, num_documents=pending_docs)
        shards.append(
            {"file": name, "num_tokens": int(tokens.size), "num_documents": pending_docs, "sha256": digest}
        )
        pending, pending_tokens, pending_docs = [], 0, 0

    for batch in _batches(iter_jsonl_texts(input_files), batch_documents):
        for ids in tok.encode_batch(batch):
            doc = np.asarray(prefix + ids + [tok.eos_id], dtype=dtype)
            pending.append(doc)
            pending_tokens += doc.size
            pending_docs += 1
            total_tokens += doc.size
        total_docs += len(batch)
        if pending_tokens >= shard_tokens:
            flush()
        now = time.monotonic()
        if now - last_log >= log_every_s:
            rate = total_tokens / (now - started)
            log.info("tokenized %d documents, %d tokens (%.0f tokens/s)", total_docs, total_tokens, rate)
            last_log = now
    if total_docs == 0:
        raise ValueError(f"no documents in {[str(f) for f in input_files]}: the dataset is empty")
    if pending_docs:
        flush()
    elapsed = time.monotonic() - started
    log.info(
        "done: %d documents, %d tokens in %d shards, %.1f s", total_docs, total_tokens, len(shards), elapsed
    )
    write_index(
        out_dir,
        shards,
        vocab_size=tok.vocab_size,
        bos_id=tok.bos_id,
        eos_id=tok.eos_id,
        tokenizer_sha256=tok.sha256,
        source={"files": [str(f) for f in input_files], "tokenizer": str(tokenizer_dir)},
    )
    return {"num_documents": total_docs, "num_tokens": total_tokens, "num_shards": len(shards)}
