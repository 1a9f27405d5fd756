"""Spike tokenizer folders — byte mode (vocabulary 256) or a patch tokenizer built from a train split — and
the one loader of any tokenizer folder the workflow writes (text or spikes).

A spike tokenizer folder holds ``spike_tokenizer.json`` (its anchor, like ``tokenizer.json`` for text), plus
``patches.npy`` in patch mode. Downstream steps need only what every tokenizer has: ``vocab_size``,
``bos_id``/``eos_id`` (None: spike rows are concatenated without a boundary token, as the seed does) and
``sha256``, which the shards' index records.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lmrepro.data.patch_tokenizer import PatchTokenizer, build
from lmrepro.data.readers import iter_piece_spike_rows, piece_num_rows, plan_pieces
from lmrepro.data.sources import spike_rows_of, split_files
from lmrepro.data.spikes import (
    TOKENIZER_FILE,
    ByteTokenizer,
    SpikeRows,
    load_byte_tokenizer,
    new_row_stats,
    read_tokenizer_meta,
    select_rows,
)
from lmrepro.data.tokenizer import TextTokenizer, load_tokenizer
from lmrepro.io import atomic_folder

log = logging.getLogger(__name__)

SpikeTokenizer = ByteTokenizer | PatchTokenizer


def is_spike_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return (path / TOKENIZER_FILE).is_file() if path.is_dir() else path.name == TOKENIZER_FILE


def load_spike_tokenizer(
    path: str | Path, *, patch: tuple[int, int] | None = None, vocab_size: int | None = None
) -> SpikeTokenizer:
    """A spike tokenizer folder (or its spike_tokenizer.json). `patch`/`vocab_size`, when given, are what
    the config asks for: a tokenizer built for another patch size or vocabulary is refused, naming the
    file."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    f, meta = read_tokenizer_meta(folder)
    if meta["mode"] == "bytes":
        if patch is not None:
            raise ValueError(
                f"{f}: a byte-mode tokenizer, but the config asks for patches {patch[0]}x{patch[1]}"
            )
        return load_byte_tokenizer(folder)
    p0, p1 = patch if patch is not None else (None, None)
    return PatchTokenizer.load(folder, p0=p0, p1=p1, vocab_size=vocab_size)


def load_any_tokenizer(path: str | Path) -> TextTokenizer | SpikeTokenizer:
    """The tokenizer of a folder the workflow wrote: spike (spike_tokenizer.json) or text (tokenizer.json)."""
    return load_spike_tokenizer(path) if is_spike_tokenizer(path) else load_tokenizer(path)


def write_byte_tokenizer(out_dir: str | Path) -> Path:
    with atomic_folder(out_dir) as tmp:
        ByteTokenizer().save(tmp)
    return Path(out_dir)


def split_rows(files: list[Path], spec: SpikeRows, stats: dict | None = None) -> Iterator[np.ndarray]:
    """The kept rows of a split's files, in order, as the tokenize step sees them (filter, n_fixed)."""
    stats = new_row_stats() if stats is None else stats
    sample_id = 0
    for piece in plan_pieces(files, piece_bytes=1 << 62):
        rows = iter_piece_spike_rows(piece, sample_id, need_lab=spec.source_dataset is not None)
        for _, counts in select_rows(rows, spec, stats):
            yield counts
        sample_id += piece_num_rows(piece)


def build_patch_tokenizer(
    files: list[Path], spec: SpikeRows, out_dir: str | Path, *, patch: tuple[int, int], vocab_size: int
) -> PatchTokenizer:
    """Build the patch tokenizer from a train split's rows (lab filter and n_fixed applied) and save it."""
    stats = new_row_stats()
    tok = build(split_rows(files, spec, stats), p0=patch[0], p1=patch[1], vocab_size=vocab_size)
    tok.built_from = {**(tok.built_from or {}), "rows_skipped_not_2d": stats["rows_not_2d"]}
    if stats["rows_kept"] == 0:
        raise ValueError(f"no spike rows to build a patch tokenizer from in {[str(f) for f in files]}")
    with atomic_folder(out_dir) as tmp:
        tok.save(tmp)
    log.info(
        "patch tokenizer %dx%d: %d patches + SEP + UNK from %d rows (%d distinct patches, %.1f%% of patches "
        "in the vocabulary) → %s",
        patch[0], patch[1], len(tok.patches), stats["rows_kept"], tok.built_from["distinct_patches"],
        100 * tok.built_from["patches_in_vocab_share"], out_dir,
    )  # fmt: skip
    return PatchTokenizer.load(out_dir)


def write_spike_tokenizer(
    out_dir: str | Path,
    *,
    raw: str | Path | None = None,
    folder: str | Path | None = None,
    patch: tuple[int, int] | None = None,
    vocab_size: int | None = None,
) -> Path:
    """The workflow's spike tokenizer step: byte mode (neither `raw` nor `folder`), a patch tokenizer built
    from the train split of the prepared spike dataset `raw`, or the patch tokenizer `folder` copied after
    checking it was built for `patch` and `vocab_size`."""
    if raw is None and folder is None:
        return write_byte_tokenizer(out_dir)
    if patch is None or vocab_size is None:
        raise ValueError("a patch tokenizer needs its patch size and vocab_size")
    if folder is not None:
        tok = load_spike_tokenizer(folder, patch=tuple(patch), vocab_size=vocab_size)
        with atomic_folder(out_dir) as tmp:
            for name in (TOKENIZER_FILE, "patches.npy"):
                shutil.copy(Path(folder) / name, tmp / name)
        log.info("imported patch tokenizer %s (%d tokens) → %s", folder, tok.vocab_size, out_dir)
        return Path(out_dir)
    spec = spike_rows_of(raw)
    if spec is None:
        raise ValueError(f"{raw} holds text, not spike-count rows: a patch tokenizer learns from kind spikes")
    files, _ = split_files(raw, "train")
    build_patch_tokenizer(files, spec, out_dir, patch=tuple(patch), vocab_size=vocab_size)
    return Path(out_dir)
