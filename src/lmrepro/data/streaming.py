"""Streaming mode: raw documents read with `datasets` streaming, tokenized on the fly, packed into windows.

The torchtitan-mlm strategy (`load_dataset(..., streaming=True)` + `split_dataset_by_node` + a seeded
shuffle), changed where it could not resume exactly:

* **Shuffle.** `IterableDataset.shuffle(buffer_size)` drops (or re-reads) the rows of its buffer on
  resume — its docstring says so, and it is the "re-read rows it should have skipped" of the seed. Here
  each sub-stream is read in blocks of `shuffle_buffer_documents` documents; a block is permuted with a
  seed from (seed, source, stream, epoch, block) and consumed in that order. The position is (epoch,
  block, the `datasets` state_dict() at the block's start, document in the block, token offset in the
  document): a resume re-reads one block and re-tokenizes one document, and nothing is stored but that
  position — no token buffer (a document longer than a window would make one unbounded). A source's files
  are shuffled per epoch with a seed from (seed, source, epoch), the same for all streams, so that the
  streams' splits of one file list partition it.
* **Mixture.** `interleave_datasets(probabilities=…)` mixes rows, so token shares depend on document
  lengths. Here every window is filled from one source, chosen by the same token-fraction schedule as
  shards mode (lmrepro.data.mixture) over the stream's own windows; each source keeps its own position.
* **Ranks: virtual streams.** Splitting each source by data-parallel rank (`split_dataset_by_node(rank,
  dp)`) ties a position to its sub-stream: the positions of 4 sub-streams say nothing about where the 2
  sub-streams of a 2-rank split stand (`datasets` loads such a state silently, and rows repeat or go
  missing). So the data is cut into S virtual streams (`data.streaming.streams`), fixed for the whole run:
  stream s reads `split_dataset_by_node(rank=s, world_size=S)` of every source and is a complete mixture
  stream of its own. Each step every stream supplies G/S windows of the global batch of G; rank r of dp
  owns the contiguous streams [r·S/dp, (r+1)·S/dp) and its batch is their windows in stream order. The
  global batch is therefore the same, in the same order, on every dp that divides S, and a resume on any
  of them is exact. The cost: a rank reads S/dp sub-streams of every source, each holding one shuffle
  block in memory, and a source whose file count is not a multiple of S is split by rows (`datasets`
  keeps every S-th row), so each of its sub-streams reads all rows. S must divide G and be a multiple of
  every dp the run will use; 0 takes the checkpoint's S, or one per rank on a fresh start.

Windows are seq_len + 1 tokens of BOS + text + EOS documents laid end to end; consecutive windows of a
source overlap by one token, as in shards mode. The state holds the common keys (samples consumed, seed,
seq_len, streams S) and one JSON string of positions per stream under `stream_<s>`, written by the rank
that owns the stream (DCP saves a key that only one rank has from that rank, and one copy of a key all
ranks share). A stream's window count is samples consumed / S. The trainer records the common keys in
meta.json, so a resume knows S, and with it the keys of its own streams, before it loads them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from lmrepro.config import check_streams, check_weights
from lmrepro.data.mixture import MixtureSchedule
from lmrepro.data.prefetch import (
    Batch,
    PrefetchingLoader,
    check_common_state,
    global_sample_indices,
    initial_data_state,
)
from lmrepro.data.tokenizer import load_tokenizer

_TOKENIZE_DOCUMENTS = 64  # documents tokenized per call, from the current one on
_FILE_ORDER_TAG = 0x66696C65


def start_position() -> dict:
    """A source's position before its first window: epoch 0, block 0, first document, first token."""
    return {"epoch": 0, "block": 0, "block_start": None, "doc": 0, "offset": 0}


@dataclass(frozen=True)
class StreamSource:
    name: str
    weight: float
    files: Sequence[str]
    text_key: str = "text"


def builder_for(files: Sequence[str]) -> str:
    """The `datasets` packaged builder of a source's files (all of one kind)."""
    kinds = set()
    for f in files:
        name = str(f).lower()
        if name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")):
            kinds.add("json")
        elif name.endswith(".parquet"):
            kinds.add("parquet")
        else:
            raise ValueError(f"{f}: streaming reads .jsonl/.json (optionally .gz/.zst) or .parquet files")
    if len(kinds) != 1:
        raise ValueError(f"a streaming source mixes file kinds {sorted(kinds)}: {list(files)}")
    return kinds.pop()


class SourceReader:
    """One source's sub-stream of one virtual stream, read as windows from a resumable position."""

    def __init__(self, source: StreamSource, index: int, tokenizer, *, seq_len: int, stream: int,
                 streams: int, seed: int, block_documents: int, record: bool):  # fmt: skip
        if not source.files:
            raise ValueError(f"streaming source {source.name!r} has no files")
        self.source, self.index, self.tok = source, index, tokenizer
        self.builder = builder_for(source.files)
        self.window_tokens = seq_len + 1
        self.stream, self.streams, self.seed = stream, streams, seed
        self.block_documents, self.text_key, self.record = block_documents, source.text_key, record
        self.prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        self.seek(start_position())

    # ---- position --------------------------------------------------------------------------------
    def position(self) -> dict:
        return {k: getattr(self, k) for k in ("epoch", "block", "block_start", "doc", "offset")}

    def seek(self, position: dict) -> None:
        """Go to a position; the files are opened and the block (re-)read lazily, on the next window."""
        for key in ("epoch", "block", "block_start", "doc", "offset"):
            setattr(self, key, position[key])
        self._ds, self._texts = None, None

    def _open_epoch(self) -> None:
        from datasets import load_dataset
        from datasets.distributed import split_dataset_by_node

        files = [str(f) for f in self.source.files]
        rng = np.random.default_rng([self.seed, self.index, self.epoch, _FILE_ORDER_TAG])
        files = [files[i] for i in rng.permutation(len(files))]
        ds = load_dataset(self.builder, data_files=files, split="train", streaming=True)
        if self.streams > 1:
            ds = split_dataset_by_node(ds, rank=self.stream, world_size=self.streams)
        self._ds, self._rows, self._texts = ds, None, None
        self._tokens: dict[int, np.ndarray] = {}

    def _read_block(self) -> None:
        """Read the current block's documents (continuing the open stream, or from block_start)."""
        while True:
            if self._ds is None:
                self._open_epoch()
            if self._rows is None:
                if self.block_start is not None:
                    self._ds.load_state_dict(self.block_start)
                self._rows = iter(self._ds)
            texts = []
            for row in islice(self._rows, self.block_documents):
                if self.text_key not in row:
                    raise ValueError(
                        f"streaming source {self.source.name!r}: a row has no {self.text_key!r} field "
                        f"(keys: {sorted(row)}); set its text_key"
                    )
                texts.append(row[self.text_key])
            if texts:
                break
            if self.block == 0:
                raise ValueError(
                    f"streaming source {self.source.name!r} has no documents in stream {self.stream} of "
                    f"data.streaming.streams = {self.streams} (files: {list(self.source.files)})"
                )
            self.epoch, self.block, self.block_start, self.doc, self.offset = self.epoch + 1, 0, None, 0, 0
            self._ds = None
        self._next_block_start = json.loads(json.dumps(self._ds.state_dict()))
        rng = np.random.default_rng([self.seed, self.index, self.stream, self.epoch, self.block])
        self._texts = [texts[i] for i in rng.permutation(len(texts))]
        self._tokens = {}

    def _next_block(self) -> None:
        self.block, self.block_start, self.doc, self.offset = self.block + 1, self._next_block_start, 0, 0
        self._read_block()

    def _document(self, doc: int) -> np.ndarray:
        """BOS + tokens + EOS of a document of the current block (tokenized a few at a time)."""
        if doc not in self._tokens:
            texts = self._texts[doc : doc + _TOKENIZE_DOCUMENTS]
            eos = [self.tok.eos_id]
            ids = self.tok.encode_batch(texts)
            self._tokens = {doc + i: np.asarray(self.prefix + t + eos, np.int64) for i, t in enumerate(ids)}
        return self._tokens[doc]

    # ---- windows ---------------------------------------------------------------------------------
    def read_window(self, out: np.ndarray) -> list[tuple[str, str, int, int]]:
        """Fill `out` (seq_len + 1 tokens) with the next window; return its spans if recording.

        A span is (source, document key, first token, end token): the key is a hash of the text.
        """
        if self._texts is None:
            self._read_block()
        spans = []
        filled = 0
        while True:
            tokens = self._document(self.doc)
            take = min(len(tokens) - self.offset, self.window_tokens - filled)
            out[filled : filled + take] = tokens[self.offset : self.offset + take]
            if self.record:
                key = hashlib.sha1(self._texts[self.doc].encode()).hexdigest()[:16]
                spans.append((self.source.name, key, self.offset, self.offset + take))
            filled += take
            if filled == self.window_tokens:
                self.offset += take - 1  # the last token starts the next window too
                return spans
            self.doc, self.offset = self.doc + 1, 0
            if self.doc == len(self._texts):
                self._next_block()


class StreamingLoader(PrefetchingLoader):
    """Windows from streamed raw documents, mixed by token fractions, read as S virtual streams; a resume
    is exact on any data-parallel size that divides S."""

    def __init__(
        self,
        sources: Sequence[StreamSource],
        tokenizer: str,
        *,
        seq_len: int,
        global_batch_sequences: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        streams: int = 0,
        seed: int = 0,
        shuffle_buffer_documents: int = 10000,
        prefetch_batches: int = 2,
        pin_memory: bool | None = None,
        record_documents: bool = False,
    ):
        super().__init__(prefetch_batches, pin_memory)
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
        if global_batch_sequences % dp_size:
            raise ValueError(
                f"global batch of {global_batch_sequences} sequences does not split over {dp_size} "
                "data-parallel ranks"
            )
        if shuffle_buffer_documents < 1:
            raise ValueError(f"shuffle_buffer_documents must be >= 1, got {shuffle_buffer_documents}")
        self.sources = list(sources)
        self.names = [s.name for s in sources]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"streaming sources need distinct names, got {self.names}")
        fractions = check_weights({s.name: s.weight for s in sources}, "data.sources")
        self.schedule = MixtureSchedule(list(fractions.values()), seed)
        self._tok = load_tokenizer(tokenizer)
        self.vocab_size = self._tok.vocab_size
        self.seq_len, self.seed = seq_len, seed
        self.global_batch_sequences = global_batch_sequences
        self.local_batch_sequences = global_batch_sequences // dp_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.configured_streams = streams  # 0: as saved, or one per rank on a fresh start
        self._reading = dict(seq_len=seq_len, seed=seed, block_documents=shuffle_buffer_documents,
                             record=record_documents)  # fmt: skip
        self.samples_consumed = 0
        self._next_batch = 0  # production cursor
        self._use_streams(streams or dp_size)

    # ---- streams ---------------------------------------------------------------------------------
    def _use_streams(self, streams: int, *, saved: bool = False) -> None:
        """Read S virtual streams: readers of this rank's streams, at their first windows."""
        check_streams(streams, self.global_batch_sequences, self.dp_size, saved=saved)
        self.close()
        self.streams = streams
        per_rank = streams // self.dp_size
        own = range(self.dp_rank * per_rank, (self.dp_rank + 1) * per_rank)
        self._readers = {
            s: [SourceReader(source, k, self._tok, stream=s, streams=streams, **self._reading)
                for k, source in enumerate(self.sources)]
            for s in own
        }  # fmt: skip
        self._positions = {s: [start_position() for _ in self.sources] for s in own}  # of consumed batches

    def _saved_streams(self, saved: int) -> int:
        if self.configured_streams not in (0, saved):
            raise ValueError(
                f"data.streaming.streams = {self.configured_streams} but the checkpoint was saved with "
                f"{saved} streams; a run keeps its streams: set data.streaming.streams = {saved} or 0"
            )
        return saved

    @property
    def scheduled_samples(self) -> int:
        return self.samples_consumed // self.streams  # every stream follows the same schedule

    # ---- producing and consuming -------------------------------------------------------------------
    def _produce(self) -> Batch:
        batch_index = self._next_batch
        self._next_batch += 1
        per_stream = self.global_batch_sequences // self.streams
        sources, _ = self.schedule.assign(batch_index * per_stream, per_stream)
        rows = np.empty((self.local_batch_sequences, self.seq_len + 1), dtype=np.int64)
        ids = []
        for i, readers in enumerate(self._readers.values()):
            for k, row in zip(sources.tolist(), rows[i * per_stream : (i + 1) * per_stream], strict=True):
                ids.append(readers[k].read_window(row))
        inputs, targets = self._tensors(rows)
        state = {
            "samples_consumed": (batch_index + 1) * self.global_batch_sequences,
            "positions": {s: [r.position() for r in readers] for s, readers in self._readers.items()},
        }
        samples = global_sample_indices(
            batch_index, self.global_batch_sequences, self.dp_rank, self.local_batch_sequences
        )
        return Batch(inputs, targets, state, ids, samples)

    def _consume(self, batch: Batch) -> None:
        self.samples_consumed = batch.state["samples_consumed"]
        self._positions = batch.state["positions"]

    def _rewind(self) -> None:
        for s, readers in self._readers.items():
            for reader, position in zip(readers, self._positions[s], strict=True):
                reader.seek(position)
        self._next_batch = self.samples_consumed // self.global_batch_sequences

    # ---- state -------------------------------------------------------------------------------------
    def common_state(self) -> dict:
        return {
            "samples_consumed": self.samples_consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "streams": self.streams,
        }

    def state_dict(self) -> dict:
        own = {
            f"stream_{s}": json.dumps({"sources": self.names, "positions": positions})
            for s, positions in self._positions.items()
        }
        return {**self.common_state(), **own}

    def resume_template(self, checkpoint_meta: dict) -> dict:
        """Step 0 holds only the common keys; a later checkpoint the keys of this rank's streams, whose
        number its meta.json records (the trainer writes common_state() there)."""
        if checkpoint_meta.get("step", 0) == 0:
            return initial_data_state(self.seed, self.seq_len)
        saved = checkpoint_meta.get("data", {}).get("streams")
        if saved is None:
            raise ValueError(
                "the checkpoint's meta.json records no data.streams: it was not saved in streaming mode"
            )
        self._use_streams(self._saved_streams(saved), saved=True)
        return self.state_dict()

    def load_state_dict(self, state: dict) -> None:
        check_common_state(state, seed=self.seed, seq_len=self.seq_len, batch=self.global_batch_sequences)
        if "streams" not in state:  # the step-0 seed checkpoint
            if state["samples_consumed"]:
                raise ValueError(f"streaming data state has no number of streams: {sorted(state)}")
            self._use_streams(self.configured_streams or self.dp_size)
        else:
            self._use_streams(self._saved_streams(state["streams"]), saved=True)
            for s in self._positions:
                if f"stream_{s}" not in state:
                    raise ValueError(f"streaming data state has no stream_{s} position: {sorted(state)}")
                stream_state = json.loads(state[f"stream_{s}"])
                if stream_state["sources"] != self.names:
                    raise ValueError(
                        f"checkpointed streaming sources {stream_state['sources']} differ from data.sources "
                        f"{self.names}"
                    )
                self._positions[s] = stream_state["positions"]
        self.samples_consumed = state["samples_consumed"]
        self._restart()
