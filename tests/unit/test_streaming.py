"""Unit tests for lmrepro.data.streaming: windows from streamed JSONL/Parquet, exact resume, streams, mixture.

The documents are real files read by `datasets` streaming and tokenized by a real BPE; every window
records the document spans it was cut from, and those spans are checked against the tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lmrepro.config import JobConfig, SourceConfig, StreamingConfig, validate
from lmrepro.data.streaming import StreamingLoader, StreamSource, builder_for
from lmrepro.data.tokenizer import load_tokenizer, train_bpe
from lmrepro.train.trainer import plan_layout

SEQ_LEN = 32
GLOBAL_BATCH = 8
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def _text(source: str, i: int, rng: np.random.Generator) -> str:
    # Lengths from a few tokens to several windows, so windows span documents and documents span windows.
    n = int(rng.choice([3, 8, 20, 60]))
    return f"{source} document {i}: " + " ".join(rng.choice(WORDS, size=n))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("streaming")
    rng = np.random.default_rng(0)
    web = []
    for f in range(4):  # 4 files: split by files on 2 or 4 ranks
        path = root / f"web-{f}.jsonl"
        path.write_text(
            "".join(json.dumps({"text": _text("web", f * 100 + i, rng)}) + "\n" for i in range(40))
        )
        web.append(str(path))
    code = root / "code.parquet"  # 1 file: split by rows on several ranks
    pd.DataFrame({"text": [_text("code", i, rng) for i in range(60)]}).to_parquet(code)
    train_bpe(web, 300, root / "tokenizer")
    return {"web": web, "code": [str(code)], "tokenizer": str(root / "tokenizer")}


def make(corpus: dict, sources=None, **kw) -> StreamingLoader:
    sources = sources or [StreamSource("web", 1.0, corpus["web"])]
    args = dict(
        seq_len=SEQ_LEN,
        global_batch_sequences=GLOBAL_BATCH,
        seed=0,
        shuffle_buffer_documents=16,
        prefetch_batches=0,
        record_documents=True,
    )
    args.update(kw)
    return StreamingLoader(sources, corpus["tokenizer"], **args)


def mixed(corpus: dict) -> list[StreamSource]:
    return [StreamSource("web", 0.7, corpus["web"]), StreamSource("code", 0.3, corpus["code"])]


def run(loader: StreamingLoader, batches: int) -> tuple[list[torch.Tensor], list]:
    inputs, spans = [], []
    for _ in range(batches):
        x, _ = loader.next_batch()
        inputs.append(x)
        spans.append(loader.last_batch_ids)
    return inputs, spans


def document_tokens(corpus: dict, files: list[str]) -> dict[str, list[int]]:
    """BOS + ids + EOS of every document, by the key the loader records (sha1 of the text)."""
    import hashlib

    tok = load_tokenizer(corpus["tokenizer"])
    texts = []
    for f in files:
        texts += (
            [json.loads(line)["text"] for line in Path(f).read_text().splitlines()]
            if f.endswith(".jsonl")
            else list(pd.read_parquet(f)["text"])
        )
    ids = tok.encode_batch(texts)
    return {
        hashlib.sha1(t.encode()).hexdigest()[:16]: [tok.bos_id, *i, tok.eos_id]
        for t, i in zip(texts, ids, strict=True)
    }


def test_windows_are_the_recorded_document_spans(corpus: dict) -> None:
    docs = document_tokens(corpus, corpus["web"] + corpus["code"])
    ld = make(corpus, mixed(corpus))
    for _ in range(6):
        x, y = ld.next_batch()
        assert x.shape == y.shape == (GLOBAL_BATCH, SEQ_LEN) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        for row, spans in enumerate(ld.last_batch_ids):
            expected = [t for _, key, start, end in spans for t in docs[key][start:end]]
            assert expected == x[row].tolist() + [int(y[row, -1])]


def test_one_epoch_reads_every_document_once(corpus: dict) -> None:
    docs = document_tokens(corpus, corpus["web"])
    total = sum(len(t) for t in docs.values())
    batches = (total - 1) // SEQ_LEN // GLOBAL_BATCH  # whole batches that fit in epoch 0
    _, spans = run(make(corpus), batches)
    covered: dict[str, list[tuple[int, int]]] = {}
    for window in (w for batch in spans for w in batch):
        for _, key, start, end in window:
            covered.setdefault(key, []).append((start, end))
    assert set(covered) <= set(docs)
    union = 0
    for ranges in covered.values():
        ranges.sort()
        assert ranges[0][0] == 0  # a document is read from its first token (BOS)
        for (_, end), (start, _) in zip(ranges, ranges[1:], strict=False):
            assert start == end - 1  # contiguous; consecutive windows share one token
        union += ranges[-1][1]
    # No token twice, none skipped: each window adds seq_len new tokens to the first one.
    assert union == batches * GLOBAL_BATCH * SEQ_LEN + 1
    complete = [k for k, r in covered.items() if r[-1][1] == len(docs[k])]
    assert len(complete) >= len(covered) - 1  # only the last document read may be unfinished


def test_same_seed_same_windows_other_seed_other_order(corpus: dict) -> None:
    a, _ = run(make(corpus, seed=3), 4)
    b, _ = run(make(corpus, seed=3), 4)
    c, _ = run(make(corpus, seed=4), 4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


@pytest.mark.parametrize("dp_size", [1, 2, 4])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_exact_resume_on_the_same_dp_size(corpus: dict, dp_size: int, prefetch: int) -> None:
    k, n = 5, 12  # n crosses the end of the first epoch on every rank
    for rank in range(dp_size):
        kw = dict(dp_rank=rank, dp_size=dp_size, prefetch_batches=prefetch)
        reference, ref_spans = run(make(corpus, mixed(corpus), **kw), k + n)
        first = make(corpus, mixed(corpus), **kw)
        run(first, k)
        state = first.state_dict()
        assert state["samples_consumed"] == k * GLOBAL_BATCH  # consumed, not prefetched
        state = json.loads(json.dumps(state))  # what a checkpoint holds is plain data
        first.close()
        resumed = make(corpus, mixed(corpus), **kw)
        resumed.load_state_dict(state)
        got, spans = run(resumed, n)
        assert all(torch.equal(x, y) for x, y in zip(got, reference[k:], strict=True))
        assert spans == ref_spans[k:]
        resumed.close()


def test_state_is_small_and_per_stream(corpus: dict) -> None:
    ld = make(corpus, mixed(corpus), dp_rank=1, dp_size=2, streams=4)
    run(ld, 3)
    state = ld.state_dict()
    assert set(state) == {"samples_consumed", "seed", "seq_len", "streams", "stream_2", "stream_3"}
    assert state["streams"] == 4
    assert len(state["stream_2"]) < 8192  # positions, no token or row buffers
    assert ld.common_state() == {"samples_consumed": 3 * GLOBAL_BATCH, "seed": 0, "seq_len": SEQ_LEN,
                                 "streams": 4}  # fmt: skip
    assert set(make(corpus, dp_rank=1, dp_size=2).state_dict()) >= {"stream_1"}  # 0: one per rank


def test_resume_on_another_dp_size_reads_the_same_global_batches(corpus: dict) -> None:
    k, n = 3, 6
    reference, _ = run(make(corpus, mixed(corpus), streams=4), k + n)
    four = [make(corpus, mixed(corpus), dp_rank=r, dp_size=4, streams=4) for r in range(4)]
    for ld in four:
        run(ld, k)
    state = json.loads(json.dumps({key: v for ld in four for key, v in ld.state_dict().items()}))
    for dp_size in (2, 1):
        ranks = [make(corpus, mixed(corpus), dp_rank=r, dp_size=dp_size) for r in range(dp_size)]
        template = ranks[0].resume_template({"step": k, "data": {"streams": 4}})
        assert {key for key in template if key.startswith("stream_")} == {
            f"stream_{s}" for s in range(4 // dp_size)
        }
        for ld in ranks:
            ld.load_state_dict(state)  # 0 in the config: the checkpoint's 4 streams
        for step in range(n):
            assert torch.equal(torch.cat([ld.next_batch()[0] for ld in ranks]), reference[k + step])
    assert set(make(corpus).resume_template({"step": 0})) == {"samples_consumed", "seed", "seq_len"}


def test_streams_must_divide_the_global_batch_and_split_over_the_ranks(corpus: dict) -> None:
    with pytest.raises(
        ValueError,
        match=r"^data.streaming.streams = 3 does not divide the global batch of 8 sequences; "
        r"valid: 0 or a divisor of 8: 1, 2, 4 or 8$",
    ):
        make(corpus, streams=3)
    with pytest.raises(
        ValueError,
        match=r"^data.streaming.streams = 2 does not split over 4 data-parallel ranks: run or resume on a "
        r"data-parallel size that divides 2: 1 or 2; to change to 4 ranks later, start the run with "
        r"data.streaming.streams a multiple of 4$",
    ):
        make(corpus, dp_rank=0, dp_size=4, streams=2)


def test_a_checkpoint_keeps_its_streams(corpus: dict) -> None:
    two = make(corpus, streams=2)
    run(two, 2)
    state = json.loads(json.dumps(two.state_dict()))
    with pytest.raises(ValueError, match=r"= 2 \(as saved in the checkpoint\) does not split over 4"):
        make(corpus, dp_rank=0, dp_size=4).load_state_dict(state)
    with pytest.raises(
        ValueError, match=r"data.streaming.streams = 4 but the checkpoint was saved with 2 streams"
    ):
        make(corpus, streams=4).resume_template({"step": 2, "data": {"streams": 2}})
    with pytest.raises(ValueError, match=r"records no data.streams"):
        make(corpus).resume_template({"step": 2, "data": {"samples_consumed": 16}})


def _streaming_job(**streaming) -> JobConfig:
    job = JobConfig()
    job.model.vocab_size = 300
    job.data.mode = "streaming"
    job.data.sources = [SourceConfig(name="web", files=["web.jsonl"])]
    job.data.streaming = StreamingConfig(**streaming)
    return job


def test_streams_are_checked_with_the_config(corpus: dict) -> None:
    validate(_streaming_job(streams=4))  # 4096 tokens / 128 = 32 sequences
    with pytest.raises(
        ValueError, match=r"^data.streaming.streams = 3 does not divide the global batch of 32"
    ):
        validate(_streaming_job(streams=3))
    with pytest.raises(ValueError, match=r"^data.streaming.streams = -1 must be >= 0"):
        validate(_streaming_job(streams=-1))
    assert plan_layout(_streaming_job(streams=4), world_size=2).dims.dp_size == 2
    plan_layout(_streaming_job(), world_size=4)  # 0: resolved from the checkpoint, or one per rank
    with pytest.raises(ValueError, match=r"^data.streaming.streams = 2 does not split over 4 data-parallel"):
        plan_layout(_streaming_job(streams=2), world_size=4)


def test_datasets_state_of_a_4_rank_split_does_not_fit_a_2_rank_split(corpus: dict) -> None:
    """Why positions belong to virtual streams, not ranks: a 4-rank split's `datasets` state loads silently
    into a 2-rank split, and rows repeat or go missing."""
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    def split(rank: int, world: int):
        ds = load_dataset("parquet", data_files=corpus["code"], split="train", streaming=True)
        return split_dataset_by_node(ds, rank=rank, world_size=world)

    four = [split(r, 4) for r in range(4)]
    seen, states = [], []
    for ds in four:
        rows = iter(ds)
        seen += [next(rows)["text"] for _ in range(5)]
        states.append(ds.state_dict())
    rest = []
    for rank in range(2):
        ds = split(rank, 2)
        ds.load_state_dict(states[rank])
        rest += [row["text"] for row in ds]
    everything = [row["text"] for row in split(0, 1)]
    assert Counter(seen + rest) != Counter(everything)


def test_datasets_buffer_shuffle_does_not_resume_exactly(corpus: dict) -> None:
    """Why blocks replace `IterableDataset.shuffle(buffer_size)`: its buffer is lost on resume."""
    from datasets import load_dataset

    def shuffled():
        ds = load_dataset("json", data_files=corpus["web"], split="train", streaming=True)
        return ds.shuffle(seed=1, buffer_size=20)

    ds = shuffled()
    rows = iter(ds)
    before = [next(rows)["text"] for _ in range(30)]
    resumed = shuffled()
    resumed.load_state_dict(ds.state_dict())
    after = [row["text"] for row in resumed]
    assert Counter(before + after) != Counter(row["text"] for row in shuffled())


def test_mixture_windows_follow_the_token_fractions(corpus: dict) -> None:
    ld = make(corpus, mixed(corpus))
    _, spans = run(ld, 40)
    per_source = Counter(window[0][0] for batch in spans for window in batch)
    assert per_source == {"web": 224, "code": 96}  # 320 windows × 0.7 / 0.3
    assert ld.metrics() == pytest.approx({"mixture/web": 0.7, "mixture/code": 0.3})


def test_bad_inputs_are_named(corpus: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data.sources.code: weight -1.0 must be a finite number >= 0"):
        make(corpus, [StreamSource("web", 1.0, corpus["web"]), StreamSource("code", -1.0, corpus["code"])])
    with pytest.raises(ValueError, match=r"sum to 0.0"):
        make(corpus, [StreamSource("web", 0.0, corpus["web"])])
    with pytest.raises(ValueError, match=r"streaming reads .jsonl/.json"):
        builder_for(["corpus.csv"])
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"content": "hello"}) + "\n")
    with pytest.raises(ValueError, match=r"a row has no 'text' field \(keys: \['content'\]\)"):
        make(corpus, [StreamSource("odd", 1.0, [str(nofield)])]).next_batch()
    with pytest.raises(ValueError, match=r"no documents in stream 1 of data.streaming.streams = 2"):
        make(corpus, [StreamSource("odd", 1.0, [str(nofield)])], dp_rank=1, dp_size=2).next_batch()


def test_prefetch_state_counts_consumed_batches(corpus: dict) -> None:
    ld = make(corpus, prefetch_batches=3)
    run(ld, 2)
    assert ld.state_dict()["samples_consumed"] == 2 * GLOBAL_BATCH
    ld.close()
