"""A stateful, rank-aware loader of fixed-length training windows from token shards, one or a mixture.

The data order is a pure function of (seed, global sample index). Each source's stream is cut into
windows of seq_len + 1 tokens (consecutive windows overlap by one token so every token is a target
once; their inputs, seq_len tokens each, consecutive and disjoint, are a masked-LM run's windows). Global
sample s comes from the source the mixture schedule (lmrepro.data.mixture) assigns to it, and is that
source's next window: source k's j-th sample is window order_k,e[j mod N_k] of epoch
e = j // N_k, a permutation seeded by (seed, e) for k = 0 and (seed, e, k) otherwise, so a single
source reads exactly the order it always had. Global batch b holds the samples [b·B, (b+1)·B); data-
parallel rank r takes a contiguous slice of it.

The loader's whole state is the number of samples consumed: every per-source position is recomputed
from it in O(log sources), so resuming is exact and works when the number of ranks changes. A
background thread prepares the next batches (pinned when CUDA is available); it never touches the
state, which counts only the batches next_batch has handed out.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lmrepro.config import DataConfig, SourceConfig, check_weights
from lmrepro.data.mixture import MixtureSchedule
from lmrepro.data.prefetch import Batch, PrefetchingLoader, check_common_state, global_sample_indices
from lmrepro.data.shards import TokenStream
from lmrepro.data.streaming import StreamingLoader, StreamSource


class WindowLoader(PrefetchingLoader):
    def __init__(
        self,
        streams: TokenStream | Sequence[TokenStream],
        *,
        seq_len: int,
        global_batch_sequences: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
        prefetch_batches: int = 0,
        pin_memory: bool | None = None,
    ):
        super().__init__(prefetch_batches, pin_memory)
        self.streams = [streams] if isinstance(streams, TokenStream) else list(streams)
        self.names = list(names) if names is not None else [f"source{k}" for k in range(len(self.streams))]
        weights = [1.0] * len(self.streams) if weights is None and len(self.streams) == 1 else weights
        if weights is None or len(weights) != len(self.streams) or len(set(self.names)) != len(self.streams):
            raise ValueError("a mixture needs one weight and one distinct name per token stream")
        fractions = check_weights(dict(zip(self.names, weights, strict=True)), "data.sources")
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
        if global_batch_sequences % dp_size:
            raise ValueError(
                f"global batch of {global_batch_sequences} sequences does not split over {dp_size} "
                "data-parallel ranks"
            )
        self.source_windows = [(len(s) - 1) // seq_len for s in self.streams]
        for stream, windows, share in zip(self.streams, self.source_windows, fractions.values(), strict=True):
            if windows < 1 and share > 0:
                raise ValueError(
                    f"{stream.index_path}: {len(stream)} tokens are too few for one window of "
                    f"{seq_len + 1} tokens"
                )
        self.num_windows = sum(self.source_windows)
        self._offsets = np.cumsum([0] + self.source_windows)
        self.schedule = MixtureSchedule(list(fractions.values()), seed)
        self.seq_len = seq_len
        self.global_batch_sequences = global_batch_sequences
        self.local_batch_sequences = global_batch_sequences // dp_size
        self.dp_rank = dp_rank
        self.seed = seed
        self.samples_consumed = 0
        self._next_batch = 0  # production cursor: the batch index _produce makes next
        self._orders: dict[tuple[int, int], np.ndarray] = {}
        self._orders_lock = threading.Lock()  # the prefetch thread and sample_ids() share the cache

    # ---- the data order --------------------------------------------------------------------------
    def _order(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        with self._orders_lock:
            if key not in self._orders:
                if len(self._orders) >= 2 * len(self.streams):  # keep about two epochs per source
                    self._orders.pop(next(iter(self._orders)))
                entropy = [self.seed, epoch] + ([source] if source else [])
                self._orders[key] = np.random.default_rng(entropy).permutation(self.source_windows[source])
            return self._orders[key]

    def _windows(self, batch_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(source, window within the source) of each sample this rank reads for global batch b."""
        first = batch_index * self.global_batch_sequences + self.dp_rank * self.local_batch_sequences
        sources, local = self.schedule.assign(first, self.local_batch_sequences)
        windows = np.empty_like(local)
        for k in range(len(self.streams)):
            of_k = sources == k if len(self.streams) > 1 else slice(None)
            epochs, positions = np.divmod(local[of_k], max(self.source_windows[k], 1))
            if epochs.size == 0:
                continue
            found = np.empty_like(positions)
            for epoch in range(int(epochs[0]), int(epochs[-1]) + 1):  # at most two per batch
                in_epoch = epochs == epoch
                found[in_epoch] = self._order(k, epoch)[positions[in_epoch]]
            windows[of_k] = found
        return sources, windows

    def sample_ids(self, batch_index: int) -> list[int]:
        """Window ids this rank reads for global batch `batch_index` (used by audits and tests).

        Ids are global over the sources: source k's window w has id offset_k + w, with offset_k the
        windows of the sources before it (a single source's ids are its window numbers).
        """
        sources, windows = self._windows(batch_index)
        return (self._offsets[sources] + windows).tolist()

    def split_id(self, window_id: int) -> tuple[str, int]:
        """(source name, window within that source) of a global window id."""
        k = int(np.searchsorted(self._offsets, window_id, side="right")) - 1
        return self.names[k], window_id - int(self._offsets[k])

    # ---- producing and consuming -------------------------------------------------------------------
    def _produce(self) -> Batch:
        batch_index = self._next_batch
        self._next_batch += 1
        sources, windows = self._windows(batch_index)
        inputs, targets = self._empty_batch(len(windows), self.seq_len)
        x, y = inputs.numpy(), targets.numpy()
        for i, (k, w) in enumerate(zip(sources.tolist(), windows.tolist(), strict=True)):
            # Memory map → batch, no copy in between; the targets are the same tokens shifted by one.
            self.streams[k].window(w * self.seq_len, self.seq_len, out=x[i])
            self.streams[k].window(w * self.seq_len + 1, self.seq_len, out=y[i])
        ids = (self._offsets[sources] + windows).tolist()
        state = {"samples_consumed": (batch_index + 1) * self.global_batch_sequences}
        samples = global_sample_indices(
            batch_index, self.global_batch_sequences, self.dp_rank, self.local_batch_sequences
        )
        return Batch(inputs, targets, state, ids, samples)

    def _consume(self, batch: Batch) -> None:
        self.samples_consumed = batch.state["samples_consumed"]

    def _rewind(self) -> None:
        self._next_batch = self.samples_consumed // self.global_batch_sequences

    def state_dict(self) -> dict:
        return {"samples_consumed": self.samples_consumed, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        check_common_state(state, seed=self.seed, seq_len=self.seq_len, batch=self.global_batch_sequences)
        self.samples_consumed = state["samples_consumed"]
        self._restart()


def build_loader(
    cfg: DataConfig, *, global_batch_sequences: int, dp_rank: int, dp_size: int, vocab_size: int
) -> PrefetchingLoader:
    """The training loader of a DataConfig: shards (one or a mixture) or streaming."""
    sources: list[SourceConfig] = list(cfg.sources)  # named and weighted, checked when the config loaded
    if not sources:
        raise ValueError("data.sources is empty: the run names no training dataset ({name, weight, index})")
    common = dict(
        seq_len=cfg.seq_len,
        global_batch_sequences=global_batch_sequences,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=cfg.seed,
        prefetch_batches=cfg.prefetch_batches,
        pin_memory=None if cfg.pin_memory else False,
    )
    if cfg.mode == "streaming":
        loader = StreamingLoader(
            [StreamSource(s.name, s.weight, s.files, s.text_key) for s in sources],
            cfg.streaming.tokenizer,
            streams=cfg.streaming.streams,
            shuffle_buffer_documents=cfg.streaming.shuffle_buffer_documents,
            **common,
        )
        if loader.vocab_size > vocab_size:
            raise ValueError(
                f"{cfg.streaming.tokenizer}: the tokenizer has {loader.vocab_size} tokens but the model has "
                f"model.vocab_size = {vocab_size}"
            )
        return loader
    # s.index: the folder's index file; the data-parallel ranks split verifying its shards' checksums
    streams = [TokenStream(Path(s.index).parent, verify_share=(dp_rank, dp_size)) for s in sources]
    for source, stream in zip(sources, streams, strict=True):
        if stream.vocab_size > vocab_size:
            raise ValueError(
                f"{source.index}: shards have vocab_size {stream.vocab_size} but the model has "
                f"model.vocab_size = {vocab_size}"
            )
    weights, names = [s.weight for s in sources], [s.name for s in sources]
    return WindowLoader(streams, weights=weights, names=names, **common)
