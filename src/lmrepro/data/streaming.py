"""Streaming mode: raw documents read with `datasets` streaming, tokenized on the fly, packed into windows.

The torchtitan-mlm strategy (`load_dataset(..., streaming=True)` + `split_dataset_by_node` + a seeded
shuffle), changed where it could not resume exactly:

* **Shuffle.** `IterableDataset.shuffle(buffer_size)` drops (or re-reads) the rows of its buffer on
  resume — its docstring says so, and it is the "re-read rows it should have skipped" of the seed. Here
  each source is read in blocks of `shuffle_buffer_documents` documents; a block is permuted with a seed
  from (seed, source, epoch, block) and consumed in that order. The position is (epoch, block, the
  `datasets` state_dict() at the block's start, document in the block, token offset in the document):
  a resume re-reads one block and re-tokenizes one document, and nothing is stored but that position —
  no token buffer (a document longer than a window would make one unbounded). Files are shuffled per
  epoch with the same seed.
* **Mixture.** `interleave_datasets(probabilities=…)` mixes rows, so token shares depend on document
  lengths. Here every window is filled from one source, chosen by the same token-fraction schedule as
  shards mode (lmrepro.data.mixture); each source keeps its own stream and position.
* **Ranks.** Each source is split with `split_dataset_by_node(rank, dp_size)`: rank r reads whole files
  (when the file count is a multiple of dp_size) or every dp_size-th row. That sub-stream is fixed by
  (rank, dp_size), and a rank's state is a position in it. So a checkpoint resumes exactly on the same
  data-parallel size only; positions of 4 sub-streams say nothing about where the 2 sub-streams of a
  2-rank split stand (`datasets` loads such a state silently and repeats and skips rows), so the loader
  refuses a different size. Use shards mode, whose state is global, to change the number of ranks.

Windows are seq_len + 1 tokens of BOS + text + EOS documents laid end to end; consecutive windows of a
source overlap by one token, as in shards mode. Each rank's state is one JSON string stored under its
own key `dp_rank_<r>` in the checkpoint (DCP keeps one copy of a key that all ranks share).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from lmrepro.data.loader import Batch, PrefetchingLoader, check_common_state
from lmrepro.data.mixture import MixtureSchedule, check_weights
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
    """One source's documents on one data-parallel rank, read as windows from a resumable position."""

    def __init__(self, source: StreamSource, index: int, tokenizer, *, seq_len: int, dp_rank: int,
                 dp_size: int, seed: int, block_documents: int, record: bool):  # fmt: skip
        if not source.files:
            raise ValueError(f"streaming source {source.name!r} has no files")
        self.source, self.index, self.tok = source, index, tokenizer
        self.builder = builder_for(source.files)
        self.window_tokens = seq_len + 1
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.block_documents, self.text_key, self.record = block_documents, source.text_key, record
        self.prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        self.seek(start_position())

    # ---- position --------------------------------------------------------------------------------
    def position(self) -> dict:
        return {k: getattr(self, k) for k in ("epoch", "block", "block_start", "doc", "offset")}

    def seek(self, position: dict) -> None:
        """Go to a position; the block is (re-)read lazily, on the next window."""
        for key in ("epoch", "block", "block_start", "doc", "offset"):
            setattr(self, key, position[key])
        self._open_epoch()

    def _open_epoch(self) -> None:
        from datasets import load_dataset
        from datasets.distributed import split_dataset_by_node

        files = [str(f) for f in self.source.files]
        rng = np.random.default_rng([self.seed, self.index, self.epoch, _FILE_ORDER_TAG])
        files = [files[i] for i in rng.permutation(len(files))]
        ds = load_dataset(self.builder, data_files=files, split="train", streaming=True)
        if self.dp_size > 1:
            ds = split_dataset_by_node(ds, rank=self.dp_rank, world_size=self.dp_size)
        self._ds, self._rows, self._texts = ds, None, None
        self._tokens: dict[int, np.ndarray] = {}

    def _read_block(self) -> None:
        """Read the current block's documents (continuing the open stream, or from block_start)."""
        while True:
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
                    f"streaming source {self.source.name!r} has no documents for data-parallel rank "
                    f"{self.dp_rank} of {self.dp_size} (files: {list(self.source.files)})"
                )
            self.epoch, self.block, self.block_start, self.doc, self.offset = self.epoch + 1, 0, None, 0, 0
            self._open_epoch()
        self._next_block_start = json.loads(json.dumps(self._ds.state_dict()))
        rng = np.random.default_rng([self.seed, self.index, self.epoch, self.block])
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
    """Windows from streamed raw documents, mixed by token fractions; exact resume on the same dp size."""

    def __init__(
        self,
        sources: Sequence[StreamSource],
        tokenizer: str,
        *,
        seq_len: int,
        global_batch_sequences: int,
        dp_rank: int = 0,
        dp_size: int = 1,
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
        self.names = [s.name for s in sources]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"streaming sources need distinct names, got {self.names}")
        fractions = check_weights({s.name: s.weight for s in sources}, "data.sources")
        self.schedule = MixtureSchedule(list(fractions.values()), seed)
        tok = load_tokenizer(tokenizer)
        self.vocab_size = tok.vocab_size
        self.seq_len, self.seed = seq_len, seed
        self.global_batch_sequences = global_batch_sequences
        self.local_batch_sequences = global_batch_sequences // dp_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.readers = [
            SourceReader(s, k, tok, seq_len=seq_len, dp_rank=dp_rank, dp_size=dp_size, seed=seed,
                         block_documents=shuffle_buffer_documents, record=record_documents)
            for k, s in enumerate(sources)
        ]  # fmt: skip
        self.samples_consumed = 0
        self._positions = [r.position() for r in self.readers]  # of the consumed batches
        self._next_batch = 0  # production cursor

    def _produce(self) -> Batch:
        batch_index = self._next_batch
        self._next_batch += 1
        first = batch_index * self.global_batch_sequences + self.dp_rank * self.local_batch_sequences
        sources, _ = self.schedule.assign(first, self.local_batch_sequences)
        rows = np.empty((len(sources), self.seq_len + 1), dtype=np.int64)
        ids = [self.readers[k].read_window(row) for k, row in zip(sources.tolist(), rows, strict=True)]
        inputs, targets = self._tensors(rows)
        state = {
            "samples_consumed": (batch_index + 1) * self.global_batch_sequences,
            "positions": [r.position() for r in self.readers],
        }
        return Batch(inputs, targets, state, ids)

    def _consume(self, batch: Batch) -> None:
        self.samples_consumed = batch.state["samples_consumed"]
        self._positions = batch.state["positions"]

    def _rewind(self) -> None:
        for reader, position in zip(self.readers, self._positions, strict=True):
            reader.seek(position)
        self._next_batch = self.samples_consumed // self.global_batch_sequences

    @property
    def rank_key(self) -> str:
        return f"dp_rank_{self.dp_rank}"

    def state_dict(self) -> dict:
        rank_state = {"sources": self.names, "positions": self._positions}
        return {
            "samples_consumed": self.samples_consumed,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "dp_size": self.dp_size,
            self.rank_key: json.dumps(rank_state),
        }

    def resume_template(self, checkpoint_meta: dict) -> dict:
        """Step 0 holds only the common keys; later checkpoints this rank's position, if dp matches."""
        if checkpoint_meta.get("step", 0) == 0:
            return {"samples_consumed": 0, "seed": self.seed, "seq_len": self.seq_len}
        parallel = checkpoint_meta.get("parallel", {})
        saved = parallel.get("dp_shard", 1) * parallel.get("dp_replicate", 1)
        self._check_dp_size(saved)
        return self.state_dict()

    def _check_dp_size(self, saved: int) -> None:
        if saved != self.dp_size:
            raise ValueError(
                f"data.mode = 'streaming' resumes only on the data-parallel size it was saved with "
                f"({saved} ranks, now {self.dp_size}): each rank's position is in its own "
                "split_dataset_by_node sub-stream. Resume on the same size, or use data.mode = 'shards'."
            )

    def load_state_dict(self, state: dict) -> None:
        check_common_state(state, seed=self.seed, seq_len=self.seq_len, batch=self.global_batch_sequences)
        if self.rank_key not in state:
            if state["samples_consumed"]:
                raise ValueError(f"streaming data state has no {self.rank_key} position: {sorted(state)}")
            self.samples_consumed, self._positions = 0, [start_position() for _ in self.readers]
        else:
            self._check_dp_size(state["dp_size"])
            rank_state = json.loads(state[self.rank_key])
            if rank_state["sources"] != self.names:
                raise ValueError(
                    f"checkpointed streaming sources {rank_state['sources']} differ from data.sources "
                    f"{self.names}"
                )
            self.samples_consumed, self._positions = state["samples_consumed"], rank_state["positions"]
        self._restart()
