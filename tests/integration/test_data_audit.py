"""Data audit: record every sample consumed and check that a run killed and resumed — on the same number
of data-parallel ranks or (shards mode) on another — consumes exactly what an uninterrupted run does.

Shards mode: each source's tokens encode (source, position), so a sample's id is read from the tensor the
loader returned, not from the loader's own bookkeeping. Streaming mode: windows record the document spans
they were cut from (checked against the tokens in tests/unit/test_streaming.py). Ranks are simulated in one
process by one loader per rank; the trainer itself is checked in streaming mode at the end.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_train_toml
from launch import init_checkpoint, launch, losses, train

from lmrepro.data.loader import WindowLoader
from lmrepro.data.shards import TokenStream, write_index, write_shard
from lmrepro.data.streaming import StreamingLoader, StreamSource

BASE = 10_000_000  # token = source × BASE + position in the source
SEQ_LEN = 16
GLOBAL_BATCH = 16
WEIGHTS = [0.5, 0.3, 0.2]


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[TokenStream]:
    root = tmp_path_factory.mktemp("audit")
    streams = []
    for k, num_tokens in enumerate([30_000, 9_000, 2_001]):  # 1,874 / 562 / 125 windows per epoch
        folder = root / f"source{k}"
        folder.mkdir()
        tokens = k * BASE + np.arange(num_tokens, dtype=np.uint32)
        cuts = [num_tokens // 3, num_tokens // 2]  # shard boundaries inside windows
        entries = []
        for i, part in enumerate(np.split(tokens, cuts)):
            name = f"shard-{i:05d}.bin"
            digest = write_shard(folder / name, part, vocab_size=4 * BASE, num_documents=1)
            entries.append({"file": name, "num_tokens": int(part.size), "num_documents": 1, "sha256": digest})
        index = write_index(
            folder, entries, vocab_size=4 * BASE, bos_id=None, eos_id=0, tokenizer_sha256="0" * 64, source={}
        )
        streams.append(TokenStream(index))
    return streams


def window_ids(inputs: torch.Tensor, targets: torch.Tensor) -> list[tuple[int, int]]:
    """(source, window) of each row, read from the tokens themselves."""
    ids = []
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        source, start = divmod(x[0], BASE)
        assert start % SEQ_LEN == 0
        assert x + [y[-1]] == [source * BASE + start + i for i in range(SEQ_LEN + 1)]
        ids.append((source, start // SEQ_LEN))
    return ids


def shard_loaders(sources: list[TokenStream], dp_size: int, prefetch: int = 0) -> list[WindowLoader]:
    return [
        WindowLoader(sources, weights=WEIGHTS, names=["a", "b", "c"], seq_len=SEQ_LEN,
                     global_batch_sequences=GLOBAL_BATCH, dp_rank=r, dp_size=dp_size, seed=42,
                     prefetch_batches=prefetch)
        for r in range(dp_size)
    ]  # fmt: skip


def consume(loaders: list, steps: int) -> list[list[tuple[int, int]]]:
    """The global batches of `steps` steps: every rank's rows, in rank order."""
    return [[i for ld in loaders for i in window_ids(*ld.next_batch())] for _ in range(steps)]


# 300 steps × 16 samples = 4,800: sources a, b, c go through 1, 2 and 7 epochs of their windows.
STEPS, KILLED_AT = 300, 137


def test_shards_mixture_resume_on_the_same_and_another_dp_size(sources: list[TokenStream]) -> None:
    uninterrupted = consume(shard_loaders(sources, 1), STEPS)

    # Killed: 4 ranks with prefetch threads running ahead; only the checkpointed state survives.
    four = shard_loaders(sources, 4, prefetch=3)
    before = consume(four, KILLED_AT)
    states = [ld.state_dict() for ld in four]
    assert all(s == states[0] for s in states)  # the state is global, not per rank
    state = json.loads(json.dumps(states[0]))  # a checkpoint holds plain data
    for ld in four:
        ld.close()

    for dp_size in (4, 2):
        resumed = shard_loaders(sources, dp_size, prefetch=2)
        for ld in resumed:
            ld.load_state_dict(state)
        after = consume(resumed, STEPS - KILLED_AT)
        for ld in resumed:
            ld.close()
        assert before + after == uninterrupted  # same global batches, in the same order
        consumed = Counter(i for batch in before + after for i in batch)
        assert consumed == Counter(i for batch in uninterrupted for i in batch)

    # No repeats or skips inside an epoch: each source's first epoch visits each of its windows once.
    per_source: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for batch in uninterrupted:
        for source, window in batch:
            per_source[source].append(window)
    for source, stream in enumerate(sources):
        windows = (len(stream) - 1) // SEQ_LEN
        epochs = len(per_source[source]) // windows
        assert epochs >= 1
        for e in range(epochs):
            assert sorted(per_source[source][e * windows : (e + 1) * windows]) == list(range(windows))
    shares = np.array([len(per_source[k]) for k in range(3)]) / (STEPS * GLOBAL_BATCH)
    assert np.abs(shares - WEIGHTS).max() < 1e-3


# ------------------------------------------------------------------------------------------ streaming


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> dict:
    """Two streaming sources cut from the tiny synthetic corpus: 4 JSONL files and 1 Parquet file."""
    import pandas as pd

    root = tmp_path_factory.mktemp("stream_audit")
    texts = [json.loads(line)["text"] for line in (tiny_data["raw"] / "train.jsonl").read_text().splitlines()]
    stories, facts = texts[:1000], texts[1000:]
    files = []
    for f in range(4):
        path = root / f"stories-{f}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in stories[f::4]))
        files.append(str(path))
    pd.DataFrame({"body": facts}).to_parquet(root / "facts.parquet")
    return {
        "sources": [
            StreamSource("stories", 0.6, files),
            StreamSource("facts", 0.4, [str(root / "facts.parquet")], text_key="body"),
        ],
        "tokenizer": str(tiny_data["tokenizer"]),
    }


def stream_loaders(documents: dict, dp_size: int, prefetch: int = 0) -> list[StreamingLoader]:
    return [
        StreamingLoader(documents["sources"], documents["tokenizer"], seq_len=SEQ_LEN,
                        global_batch_sequences=GLOBAL_BATCH, dp_rank=r, dp_size=dp_size, seed=7,
                        shuffle_buffer_documents=50, prefetch_batches=prefetch, record_documents=True)
        for r in range(dp_size)
    ]  # fmt: skip


def consume_spans(loaders: list[StreamingLoader], steps: int) -> list[tuple]:
    spans = []
    for _ in range(steps):
        for ld in loaders:
            ld.next_batch()
            spans += [tuple(map(tuple, window)) for window in ld.last_batch_ids]
    return spans


def test_streaming_resume_on_the_same_dp_size(documents: dict) -> None:
    steps, killed_at = 60, 23
    uninterrupted = consume_spans(stream_loaders(documents, 2), steps)

    two = stream_loaders(documents, 2, prefetch=3)
    before = consume_spans(two, killed_at)
    states = [json.loads(json.dumps(ld.state_dict())) for ld in two]
    for ld in two:
        ld.close()
    resumed = stream_loaders(documents, 2, prefetch=2)
    for ld, state in zip(resumed, states, strict=True):
        ld.load_state_dict(state)
    after = consume_spans(resumed, steps - killed_at)
    assert Counter(before + after) == Counter(uninterrupted)

    # Tokens, not just windows: every (document, token) pair is consumed as often as uninterrupted.
    def tokens(spans: list[tuple]) -> Counter:
        return Counter((src, doc, t) for window in spans for src, doc, a, b in window for t in range(a, b))

    assert tokens(before + after) == tokens(uninterrupted)

    one = stream_loaders(documents, 1)[0]
    with pytest.raises(ValueError, match=r"saved with \(2 ranks, now 1\)"):
        one.load_state_dict(states[0])


# --------------------------------------------------------------------------------- through the trainer


def _streaming_config(tmp_path: Path, documents: dict, name: str, tiny_data) -> tuple[Path, Path]:
    run_dir = tmp_path / name
    run_dir.mkdir()
    data = {
        "train_index": "",
        "mode": "streaming",
        "sources": [
            {"name": s.name, "weight": s.weight, "files": list(s.files), "text_key": s.text_key}
            for s in documents["sources"]
        ],
        "streaming": {"tokenizer": documents["tokenizer"], "shuffle_buffer_documents": 50},
    }
    config = write_train_toml(run_dir / "train.toml", run_dir, tiny_data["train_index"], data=data)
    step0 = run_dir / "checkpoints" / "step-0"
    init_checkpoint(config, step0)
    return config, step0


@pytest.mark.slow
def test_trainer_streaming_segments_resume_exactly(tmp_path: Path, documents: dict, tiny_data) -> None:
    """2 ranks (FSDP, gloo): 0 → 6 then 6 → 12 equals 0 → 12; each rank's position goes through DCP."""
    config, step0 = _streaming_config(tmp_path, documents, "ref", tiny_data)
    reference = tmp_path / "ref" / "checkpoints" / "step-12"
    train(config, step0, reference, 12, nproc=2)

    config, step0 = _streaming_config(tmp_path, documents, "seg", tiny_data)
    middle = tmp_path / "seg" / "checkpoints" / "step-6"
    train(config, step0, middle, 6, nproc=2)
    final = tmp_path / "seg" / "checkpoints" / "step-12"
    train(config, middle, final, 12, nproc=2)
    ref, got = losses(reference), losses(final)
    for step in range(7, 13):
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
    rows = [json.loads(line) for line in (final / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mixture/stories"] == pytest.approx(0.6, abs=0.02)

    # One process cannot take over the positions of two sub-streams: refused, naming both sizes.
    proc = launch(config, middle, tmp_path / "seg" / "checkpoints" / "step-12b", 12, nproc=1)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "resumes only on the data-parallel size it was saved with (2 ranks, now 1)" in out
