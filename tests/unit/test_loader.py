"""Unit tests for lmrepro.data.loader.WindowLoader on a small real token stream."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrepro.data.loader import WindowLoader
from lmrepro.data.shards import TokenStream, write_index, write_shard

VOCAB = 65536  # > NUM_TOKENS, so every token id is unique and equals its position in the stream
NUM_TOKENS = 10_000
SEQ_LEN = 16
NUM_WINDOWS = (NUM_TOKENS - 1) // SEQ_LEN  # 624
GLOBAL_BATCH = 8  # 624 / 8 = 78 batches per epoch


def write_stream(folder: Path, tokens: np.ndarray, cuts: list[int], vocab_size: int = VOCAB) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, part in enumerate(np.split(tokens, cuts)):
        name = f"shard-{i:05d}.bin"
        digest = write_shard(folder / name, part, vocab_size=vocab_size, num_documents=1)
        entries.append({"file": name, "num_tokens": int(part.size), "num_documents": 1, "sha256": digest})
    return write_index(
        folder, entries, vocab_size=vocab_size, bos_id=None, eos_id=0, tokenizer_sha256="0" * 64, source={}
    )


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> TokenStream:
    folder = tmp_path_factory.mktemp("shards")
    # Three shards whose boundaries do not fall on window boundaries.
    index = write_stream(folder, np.arange(NUM_TOKENS) % VOCAB, cuts=[3_333, 6_001])
    return TokenStream(index.parent)


def loader(stream: TokenStream, **kw) -> WindowLoader:
    args = dict(seq_len=SEQ_LEN, global_batch_sequences=GLOBAL_BATCH, seed=0)
    args.update(kw)
    return WindowLoader(stream, **args)


def take(ld: WindowLoader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [ld.next_batch() for _ in range(n)]


def test_batches_are_consecutive_windows_and_shifted_targets(stream: TokenStream) -> None:
    ld = loader(stream)
    assert ld.num_windows == NUM_WINDOWS
    for b in range(5):
        ids = ld.sample_ids(b)
        inputs, targets = ld.next_batch()
        assert inputs.shape == targets.shape == (GLOBAL_BATCH, SEQ_LEN)
        assert inputs.dtype == targets.dtype == torch.int64
        for row, window_id in enumerate(ids):
            expected = torch.arange(window_id * SEQ_LEN, window_id * SEQ_LEN + SEQ_LEN + 1)
            assert torch.equal(inputs[row], expected[:-1])
            assert torch.equal(targets[row], expected[1:])
        assert torch.equal(targets[:, :-1], inputs[:, 1:])


def test_windows_crossing_shard_boundaries_are_read_whole(stream: TokenStream) -> None:
    ld = loader(stream)
    for window_id in (3_333 // SEQ_LEN, 6_001 // SEQ_LEN):  # the windows holding the shard boundaries
        batch = next(b for b in range(NUM_WINDOWS // GLOBAL_BATCH) if window_id in ld.sample_ids(b))
        row = ld.sample_ids(batch).index(window_id)
        ld.load_state_dict({"samples_consumed": batch * GLOBAL_BATCH, "seed": 0, "seq_len": SEQ_LEN})
        inputs, targets = ld.next_batch()
        start = window_id * SEQ_LEN
        assert torch.equal(inputs[row], torch.arange(start, start + SEQ_LEN))
        assert torch.equal(targets[row], torch.arange(start + 1, start + SEQ_LEN + 1))


def test_same_seed_same_order_other_seed_other_order(stream: TokenStream) -> None:
    a, b, c = loader(stream, seed=0), loader(stream, seed=0), loader(stream, seed=1)
    batches_a, batches_b, batches_c = take(a, 4), take(b, 4), take(c, 4)
    for (xa, ya), (xb, yb) in zip(batches_a, batches_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(batches_a, batches_c, strict=True))
    assert [a.sample_ids(i) for i in range(4)] != [c.sample_ids(i) for i in range(4)]


def test_order_is_shuffled(stream: TokenStream) -> None:
    ids = [w for b in range(NUM_WINDOWS // GLOBAL_BATCH) for w in loader(stream).sample_ids(b)]
    assert ids != sorted(ids)


def test_one_epoch_visits_every_window_once(stream: TokenStream) -> None:
    ld = loader(stream)
    batches_per_epoch = NUM_WINDOWS // GLOBAL_BATCH
    epoch0 = [w for b in range(batches_per_epoch) for w in ld.sample_ids(b)]
    assert sorted(epoch0) == list(range(NUM_WINDOWS))
    epoch1 = [w for b in range(batches_per_epoch, 2 * batches_per_epoch) for w in ld.sample_ids(b)]
    assert sorted(epoch1) == list(range(NUM_WINDOWS))
    assert epoch1 != epoch0  # each epoch has its own permutation


def test_epoch_boundary_inside_a_batch(stream: TokenStream) -> None:
    ld = loader(stream, global_batch_sequences=10)  # 624 windows: batch 62 spans two epochs
    samples = [w for b in range(62) for w in ld.sample_ids(b)] + ld.sample_ids(62)[:4]
    assert sorted(samples) == list(range(NUM_WINDOWS))


def test_first_epoch_read_through_next_batch_covers_the_stream(tmp_path: Path) -> None:
    index = write_stream(tmp_path, np.arange(161) % VOCAB, cuts=[50, 120])  # 10 windows of 16 + 1
    ld = WindowLoader(TokenStream(index.parent), seq_len=SEQ_LEN, global_batch_sequences=5, seed=3)
    inputs = torch.cat([ld.next_batch()[0], ld.next_batch()[0]])
    firsts = sorted(int(x) for x in inputs[:, 0])
    assert firsts == [w * SEQ_LEN for w in range(10)]
    targets_seen = sorted(int(t) for t in torch.cat([ld.next_batch()[1], ld.next_batch()[1]]).flatten())
    assert targets_seen == list(range(1, 161))  # every token but the first is a target exactly once


def test_exact_resume(stream: TokenStream) -> None:
    k, n = 5, 4
    uninterrupted = loader(stream, seed=7)
    reference = take(uninterrupted, k + n)[k:]

    first = loader(stream, seed=7)
    take(first, k)
    state = first.state_dict()
    assert state == {"samples_consumed": k * GLOBAL_BATCH, "seed": 7, "seq_len": SEQ_LEN}

    resumed = loader(stream, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (xr, yr) in zip(take(resumed, n), reference, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)


def test_resume_across_epoch_boundary(stream: TokenStream) -> None:
    k = NUM_WINDOWS // GLOBAL_BATCH - 1  # the last batch of epoch 0 comes next
    uninterrupted = loader(stream)
    reference = take(uninterrupted, k + 3)[k:]
    resumed = loader(stream)
    resumed.load_state_dict({"samples_consumed": k * GLOBAL_BATCH, "seed": 0, "seq_len": SEQ_LEN})
    for (x, _), (xr, _) in zip(take(resumed, 3), reference, strict=True):
        assert torch.equal(x, xr)


def rank_loaders(stream: TokenStream, dp_size: int, seed: int = 0) -> list[WindowLoader]:
    return [loader(stream, dp_rank=r, dp_size=dp_size, seed=seed) for r in range(dp_size)]


def concat_ids(loaders: list[WindowLoader], batch_index: int) -> list[int]:
    return [w for ld in loaders for w in ld.sample_ids(batch_index)]


def test_dp_size_change_keeps_global_batches(stream: TokenStream) -> None:
    one, two, four = rank_loaders(stream, 1), rank_loaders(stream, 2), rank_loaders(stream, 4)
    assert four[0].local_batch_sequences == 2
    for b in range(70, 86):  # crosses the epoch boundary at batch 78
        expected = one[0].sample_ids(b)
        assert len(expected) == GLOBAL_BATCH
        assert concat_ids(two, b) == expected
        assert concat_ids(four, b) == expected
        # Ranks never share a window within a batch.
        assert len(set(concat_ids(four, b))) == GLOBAL_BATCH


def test_dp_ranks_read_their_slice_of_the_global_batch(stream: TokenStream) -> None:
    single = loader(stream)
    ranks = rank_loaders(stream, 4)
    for _ in range(3):
        x, y = single.next_batch()
        parts = [ld.next_batch() for ld in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_resume_from_four_ranks_on_two(stream: TokenStream) -> None:
    k, n = 6, 5
    reference = take(loader(stream, seed=2), k + n)[k:]

    four = rank_loaders(stream, 4, seed=2)
    for ld in four:
        take(ld, k)
    states = [ld.state_dict() for ld in four]
    assert all(s == states[0] for s in states)  # the state is global, not per rank

    two = rank_loaders(stream, 2, seed=2)
    for ld in two:
        ld.load_state_dict(states[0])
    for step in range(n):
        parts = [ld.next_batch() for ld in two]
        assert torch.equal(torch.cat([p[0] for p in parts]), reference[step][0])
        assert torch.equal(torch.cat([p[1] for p in parts]), reference[step][1])
    assert two[0].samples_consumed == (k + n) * GLOBAL_BATCH


@pytest.mark.parametrize(("key", "value"), [("seed", 1), ("seq_len", 32)])
def test_load_state_dict_refuses_other_seed_or_seq_len(stream: TokenStream, key: str, value: int) -> None:
    state = loader(stream).state_dict()
    state[key] = value
    ld = loader(stream)
    with pytest.raises(ValueError, match=f"checkpointed data {key} = {value}"):
        ld.load_state_dict(state)
    assert ld.samples_consumed == 0


def test_load_state_dict_refuses_partial_global_batch(stream: TokenStream) -> None:
    ld = loader(stream)
    with pytest.raises(ValueError, match="not a multiple of the global batch"):
        ld.load_state_dict({"samples_consumed": GLOBAL_BATCH + 3, "seed": 0, "seq_len": SEQ_LEN})


def test_global_batch_must_split_over_ranks(stream: TokenStream) -> None:
    with pytest.raises(ValueError, match="does not split over 3 data-parallel ranks"):
        loader(stream, global_batch_sequences=8, dp_size=3)
    with pytest.raises(ValueError):
        loader(stream, global_batch_sequences=6, dp_size=4)


def test_stream_too_short_for_one_window(tmp_path: Path) -> None:
    index = write_stream(tmp_path / "short", np.arange(SEQ_LEN), cuts=[])
    with pytest.raises(ValueError) as e:
        WindowLoader(TokenStream(index.parent), seq_len=SEQ_LEN, global_batch_sequences=1)
    assert str(index) in str(e.value)
    assert f"{SEQ_LEN} tokens are too few for one window of {SEQ_LEN + 1} tokens" in str(e.value)
    # One more token is exactly one window.
    index = write_stream(tmp_path / "exact", np.arange(SEQ_LEN + 1), cuts=[])
    ld = WindowLoader(TokenStream(index.parent), seq_len=SEQ_LEN, global_batch_sequences=2)
    assert ld.num_windows == 1
    x, y = ld.next_batch()  # both samples are the single window (two epochs of one window)
    assert torch.equal(x, torch.arange(SEQ_LEN).repeat(2, 1))
    assert torch.equal(y, torch.arange(1, SEQ_LEN + 1).repeat(2, 1))


# ------------------------------------------------------------------------------------------ prefetch


@pytest.mark.parametrize("depth", [1, 3])
def test_prefetch_gives_the_same_batches(stream: TokenStream, depth: int) -> None:
    reference = take(loader(stream, seed=5), 12)
    ld = loader(stream, seed=5, prefetch_batches=depth)
    for (x, y), (xr, yr) in zip(take(ld, 12), reference, strict=True):
        assert torch.equal(x, xr) and torch.equal(y, yr)
        assert x.is_contiguous() and y.is_contiguous()
    ld.close()


def test_prefetched_batches_are_not_in_the_state(stream: TokenStream) -> None:
    ld = loader(stream, prefetch_batches=4)
    take(ld, 3)
    deadline = time.monotonic() + 10
    while ld._prefetcher._queue.qsize() < 4 and time.monotonic() < deadline:  # the thread ran ahead
        time.sleep(0.01)
    assert ld.state_dict()["samples_consumed"] == 3 * GLOBAL_BATCH
    assert ld.last_batch_ids == ld.sample_ids(2)
    # A job killed now and resumed from this state reads batch 3 next, not batch 7.
    resumed = loader(stream, prefetch_batches=4)
    resumed.load_state_dict(ld.state_dict())
    x, _ = resumed.next_batch()
    assert [int(r[0]) // SEQ_LEN for r in x] == ld.sample_ids(3)
    ld.close()
    resumed.close()


def test_load_state_dict_while_prefetching_restarts_the_thread(stream: TokenStream) -> None:
    reference = take(loader(stream), 8)
    ld = loader(stream, prefetch_batches=2)
    take(ld, 6)
    ld.load_state_dict({"samples_consumed": 2 * GLOBAL_BATCH, "seed": 0, "seq_len": SEQ_LEN})
    for (x, _), (xr, _) in zip(take(ld, 6), reference[2:], strict=True):
        assert torch.equal(x, xr)
    ld.close()


def test_an_error_in_the_prefetch_thread_reaches_next_batch(stream: TokenStream) -> None:
    ld = loader(stream, prefetch_batches=2)

    def broken() -> None:
        raise OSError("disk gone")

    ld._produce = broken
    with pytest.raises(OSError, match="disk gone"):
        ld.next_batch()


def test_pinning_only_when_asked_or_on_cuda(stream: TokenStream) -> None:
    assert loader(stream).pin_memory == torch.cuda.is_available()
    assert loader(stream, pin_memory=False).pin_memory is False
