"""Data audit: record every sample consumed and check that a run killed and resumed — on the same number
of data-parallel ranks or on another — consumes exactly what an uninterrupted run does.

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
from trainer_processes import init_checkpoint, losses, train

from lmrepro.checkpoint import dcp
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
        write_index(
            folder, entries, vocab_size=4 * BASE, bos_id=None, eos_id=0, tokenizer_sha256="0" * 64, source={}
        )
        streams.append(TokenStream(folder))
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


def test_spike_shards_resume_on_the_same_and_another_dp_size(tmp_path: Path) -> None:
    """The same audit on spike-count shards made by the real data route (stand-in rows, a lab filter,
    n_fixed, byte tokens): a window's id is its position, so each window is checked against the stream's
    tokens there, and the windows of every epoch are visited once across a kill/resume and a dp change."""
    from lmrepro.data.encode import tokenize_to_shards
    from lmrepro.data.sources import prepare_dataset, spike_rows_of, split_files
    from lmrepro.data.spike_tokenizer import write_spike_tokenizer

    spec = {"source": "synthetic", "kind": "spikes", "seed": 2, "num_train_rows": 40, "num_bad_rows": 1,
            "source_dataset": ["willett", "xiao", "perich"], "n_fixed": 5}  # fmt: skip
    prepare_dataset(spec, tmp_path / "raw", name="pile")
    files, _ = split_files(tmp_path / "raw", "train")
    tokenize_to_shards(files, write_spike_tokenizer(tmp_path / "bytes"), tmp_path / "train",
                       spike_rows=spike_rows_of(tmp_path / "raw"), piece_bytes=4096, num_proc=2)  # fmt: skip
    stream = TokenStream(tmp_path / "train")
    windows = (len(stream) - 1) // SEQ_LEN

    def loaders(dp_size: int, prefetch: int = 0) -> list[WindowLoader]:
        return [
            WindowLoader(stream, seq_len=SEQ_LEN, global_batch_sequences=GLOBAL_BATCH, dp_rank=r,
                         dp_size=dp_size, seed=3, prefetch_batches=prefetch)
            for r in range(dp_size)
        ]  # fmt: skip

    def run(lds: list[WindowLoader], steps: int) -> list[list[int]]:
        batches = []
        for _ in range(steps):
            batch = []
            for ld in lds:
                index = ld.samples_consumed // GLOBAL_BATCH
                x, y = ld.next_batch()
                for w, row_x, row_y in zip(ld.sample_ids(index), x.tolist(), y.tolist(), strict=True):
                    expected = stream.window(w * SEQ_LEN, SEQ_LEN + 1).tolist()
                    assert row_x + [row_y[-1]] == expected  # the tokens are the window the id names
                    batch.append(w)
            batches.append(batch)
        return batches

    steps = 3 * windows // GLOBAL_BATCH  # three epochs
    uninterrupted = run(loaders(1), steps)
    four = loaders(4, prefetch=2)
    before = run(four, steps // 2)
    state = json.loads(json.dumps(four[0].state_dict()))
    for ld in four:
        ld.close()
    for dp_size in (4, 2):
        resumed = loaders(dp_size, prefetch=1)
        for ld in resumed:
            ld.load_state_dict(state)
        assert before + run(resumed, steps - steps // 2) == uninterrupted
        for ld in resumed:
            ld.close()
    seen = [w for batch in uninterrupted for w in batch]
    for e in range(len(seen) // windows):
        assert sorted(seen[e * windows : (e + 1) * windows]) == list(range(windows))


# ------------------------------------------------------------------------------------------ streaming


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory, tiny_data) -> dict:
    """Two streaming sources cut from the tiny synthetic corpus: 4 zstd-compressed JSONL files (one per
    stream of 4) and 1 Parquet file (split by rows)."""
    import pandas as pd
    import zstandard

    root = tmp_path_factory.mktemp("stream_audit")
    texts = [json.loads(line)["text"] for line in (tiny_data["raw"] / "train.jsonl").read_text().splitlines()]
    stories, facts = texts[:1000], texts[1000:1080]  # 20 facts per stream of 4: several epochs
    files = []
    for f in range(4):
        path = root / f"stories-{f}.jsonl.zst"
        jsonl = "".join(json.dumps({"text": t}) + "\n" for t in stories[f::4])
        path.write_bytes(zstandard.ZstdCompressor().compress(jsonl.encode()))
        files.append(str(path))
    pd.DataFrame({"body": facts}).to_parquet(root / "facts.parquet")
    return {
        "sources": [
            StreamSource("stories", 0.6, files),
            StreamSource("facts", 0.4, [str(root / "facts.parquet")], text_key="body"),
        ],
        "tokenizer": str(tiny_data["tokenizer"]),
    }


STREAMS = 4


def stream_loaders(
    documents: dict, dp_size: int, prefetch: int = 0, streams: int = 0
) -> list[StreamingLoader]:
    return [
        StreamingLoader(documents["sources"], documents["tokenizer"], seq_len=SEQ_LEN,
                        global_batch_sequences=GLOBAL_BATCH, dp_rank=r, dp_size=dp_size, streams=streams,
                        seed=7, shuffle_buffer_documents=8, prefetch_batches=prefetch, record_documents=True)
        for r in range(dp_size)
    ]  # fmt: skip


def consume_spans(loaders: list[StreamingLoader], steps: int) -> list[list[tuple]]:
    """The global batches of `steps` steps as document spans: every rank's windows, in rank order."""
    batches = []
    for _ in range(steps):
        batch = []
        for ld in loaders:
            ld.next_batch()
            batch += [tuple(map(tuple, window)) for window in ld.last_batch_ids]
        batches.append(batch)
    return batches


def checkpoint(loaders: list[StreamingLoader]) -> dict:
    """What DCP keeps of the ranks' states: every key once (common keys alike, stream keys per owner)."""
    states = [ld.state_dict() for ld in loaders]
    common = {k: v for k, v in states[0].items() if not k.startswith("stream_")}
    assert all({k: v for k, v in s.items() if not k.startswith("stream_")} == common for s in states)
    for ld in loaders:
        ld.close()
    return json.loads(json.dumps({k: v for s in states for k, v in s.items()}))


def test_streaming_resume_on_the_same_and_another_dp_size(documents: dict) -> None:
    steps, killed_at = 60, 23
    uninterrupted = consume_spans(stream_loaders(documents, 1, streams=STREAMS), steps)
    assert consume_spans(stream_loaders(documents, 4, streams=STREAMS), steps) == uninterrupted
    # The streams partition each source: a document is read by one stream only (rows s·G/S … of a batch).
    streams_of: dict[tuple[str, str], set[int]] = {}
    for batch in uninterrupted:
        for row, window in enumerate(batch):
            for source, doc, _, _ in window:
                streams_of.setdefault((source, doc), set()).add(row // (GLOBAL_BATCH // STREAMS))
    assert {len(s) for s in streams_of.values()} == {1}

    # Killed: 2 ranks with prefetch threads running ahead; only the checkpointed state survives.
    two = stream_loaders(documents, 2, prefetch=3, streams=STREAMS)
    before = consume_spans(two, killed_at)
    state = checkpoint(two)
    assert state["streams"] == STREAMS and state["samples_consumed"] == killed_at * GLOBAL_BATCH

    def tokens(batches: list[list[tuple]]) -> Counter:
        """(document, token) pairs: every token is consumed as often as uninterrupted."""
        return Counter(
            (src, doc, t)
            for batch in batches
            for window in batch
            for src, doc, a, b in window
            for t in range(a, b)
        )

    for dp_size in (4, 2, 1):
        resumed = stream_loaders(documents, dp_size, prefetch=2)  # streams = 0: as saved
        for ld in resumed:
            ld.load_state_dict(state)
        after = consume_spans(resumed, steps - killed_at)
        for ld in resumed:
            ld.close()
        assert before + after == uninterrupted  # same global batches of windows, in the same order
        assert tokens(before + after) == tokens(uninterrupted)

    # A checkpoint of 2 streams cannot be split over 4 ranks; a config cannot change a run's streams.
    two = stream_loaders(documents, 2)  # streams = 0 on a fresh start: one per rank
    consume_spans(two, 3)
    state = checkpoint(two)
    with pytest.raises(
        ValueError, match=r"data.streaming.streams = 2 \(as saved in the checkpoint\) does not"
    ):
        stream_loaders(documents, 4)[0].load_state_dict(state)
    with pytest.raises(ValueError, match=r"data.streaming.streams = 4 but the checkpoint was saved with 2"):
        stream_loaders(documents, 2, streams=STREAMS)[0].load_state_dict(state)


# --------------------------------------------------------------------------------- through the trainer


def _streaming_config(tmp_path: Path, documents: dict, name: str, tiny_data) -> tuple[Path, Path]:
    run_dir = tmp_path / name
    run_dir.mkdir()
    data = {
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
    """2 ranks (FSDP, gloo): 0 → 6 then 6 → 12 equals 0 → 12, each stream's position going through DCP; the
    run's 2 streams (one per rank at the start) continue on 1 process: the same batches, the same losses."""
    config, step0 = _streaming_config(tmp_path, documents, "ref", tiny_data)
    reference = tmp_path / "ref" / "checkpoints" / "step-12"
    train(config, step0, reference, 12, nproc=2)

    config, step0 = _streaming_config(tmp_path, documents, "seg", tiny_data)
    middle = tmp_path / "seg" / "checkpoints" / "step-6"
    train(config, step0, middle, 6, nproc=2)
    expected = {"samples_consumed": 48, "seed": 0, "seq_len": 32, "streams": 2}
    assert dcp.read_checkpoint_info(middle)["data"] == expected
    final = tmp_path / "seg" / "checkpoints" / "step-12"
    train(config, middle, final, 12, nproc=2)
    ref, got = losses(reference), losses(final)
    for step in range(7, 13):
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
    rows = [json.loads(line) for line in (final / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mixture/stories"] == pytest.approx(0.6, abs=0.02)

    # 6 → 12 on one process (its own run folder: no rolling checkpoint of the 2-rank segment is picked up).
    config, _ = _streaming_config(tmp_path, documents, "one", tiny_data)
    single = tmp_path / "one" / "checkpoints" / "step-12"
    train(config, middle, single, 12, nproc=1)
    one = losses(single)
    for step in range(7, 13):
        assert one[step] == pytest.approx(ref[step], rel=1e-4), step  # FSDP 2 vs 1 process, as test_parallel
    rows = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["mixture/stories"] == pytest.approx(0.6, abs=0.02)
