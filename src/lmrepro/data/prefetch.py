"""What every training loader shares: a batch as produced, a background thread that prepares batches ahead
of the step, and the loader base class whose state follows consumption, not production. The shards loader
(lmrepro.data.loader) and the streaming loader (lmrepro.data.streaming) build on it.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """One rank's batch as produced (possibly ahead of time), with what consuming it means."""

    inputs: torch.Tensor  # [local_batch, seq_len] int64
    targets: torch.Tensor  # [local_batch, seq_len] int64
    state: dict  # the loader state once this batch is consumed
    ids: list = field(default_factory=list)  # what was read, for audits (window ids, document spans)
    # Global sample index of each row: global batch b, position p in it -> b * global batch + p. The
    # global batch is the same on every data-parallel size, so this index is too (MLM masks are keyed by it).
    sample_indices: list[int] = field(default_factory=list)


def global_sample_indices(batch_index: int, global_batch: int, dp_rank: int, local_batch: int) -> list[int]:
    """The global sample indices of rank `dp_rank`'s contiguous slice of global batch `batch_index`."""
    first = batch_index * global_batch + dp_rank * local_batch
    return list(range(first, first + local_batch))


class _Prefetcher:
    """Calls produce() in order on a background thread, keeping up to `depth` batches ready."""

    def __init__(self, produce: Callable[[], Batch], depth: int):
        self._produce = produce
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lmrepro-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while self._put(self._produce()):
                pass
        except BaseException as e:  # surfaced by get(), in the training thread
            self._put(e)

    def get(self) -> Batch:
        item = self._queue.get()
        if isinstance(item, BaseException):
            self.stop()
            raise item
        return item

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class PrefetchingLoader(ABC):
    """Shared mechanics: the production cursor runs ahead in a thread; the state follows consumption.

    Subclasses implement _produce() (the batch after the production cursor, advancing it) and
    _rewind() (put the production cursor back at the consumed state, after load_state_dict).
    """

    def __init__(self, prefetch_batches: int, pin_memory: bool | None):
        if prefetch_batches < 0:
            raise ValueError(f"prefetch_batches must be >= 0, got {prefetch_batches}")
        self.prefetch_batches = prefetch_batches
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.last_batch_ids: list = []
        self.last_sample_indices: list[int] = []  # of the batch next_batch handed out last
        self._prefetcher: _Prefetcher | None = None

    @abstractmethod
    def _produce(self) -> Batch: ...

    @abstractmethod
    def _rewind(self) -> None: ...

    @abstractmethod
    def _consume(self, batch: Batch) -> None: ...

    def _empty_batch(self, rows: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Contiguous (inputs, targets) to fill in place, allocated pinned when asked for: a pinned,
        contiguous micro-batch slice goes to the GPU asynchronously (non_blocking) with no extra copy."""
        inputs = torch.empty((rows, seq_len), dtype=torch.int64, pin_memory=self.pin_memory)
        targets = torch.empty((rows, seq_len), dtype=torch.int64, pin_memory=self.pin_memory)
        return inputs, targets

    def _tensors(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """[rows, seq_len + 1] windows → contiguous (inputs, targets)."""
        inputs, targets = self._empty_batch(windows.shape[0], windows.shape[1] - 1)
        inputs.numpy()[:] = windows[:, :-1]
        targets.numpy()[:] = windows[:, 1:]
        return inputs, targets

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), each [local_batch_sequences, seq_len] int64."""
        if self.prefetch_batches == 0:
            batch = self._produce()
        else:
            if self._prefetcher is None:
                self._prefetcher = _Prefetcher(self._produce, self.prefetch_batches)
            batch = self._prefetcher.get()
        self._consume(batch)
        self.last_batch_ids = batch.ids
        self.last_sample_indices = batch.sample_indices
        return batch.inputs, batch.targets

    def close(self) -> None:
        """Stop the prefetch thread (batches it prepared are dropped; the state is unaffected)."""
        if self._prefetcher is not None:
            self._prefetcher.stop()
            self._prefetcher = None

    def _restart(self) -> None:
        self.close()
        self._rewind()

    def resume_template(self, checkpoint_meta: dict) -> dict:
        """The structure of the data state to load from a checkpoint (its meta.json given)."""
        return self.state_dict()

    @abstractmethod
    def state_dict(self) -> dict: ...

    def common_state(self) -> dict:
        """The part of the state every rank holds alike; the trainer records it in meta.json ("data")."""
        return self.state_dict()

    @property
    def scheduled_samples(self) -> int:
        """Samples the mixture schedule has assigned so far (its realised shares are the global ones)."""
        return self.samples_consumed

    def metrics(self) -> dict[str, float]:
        """Realised token share of each source so far (mixture/<name>), for the metrics rows."""
        if len(self.names) < 2:
            return {}
        shares = self.schedule.shares(self.scheduled_samples)
        return {f"mixture/{name}": share for name, share in zip(self.names, shares, strict=True)}


def check_common_state(state: dict, *, seed: int, seq_len: int, batch: int) -> None:
    """Refuse a checkpointed data state that would change the data order or split a global batch."""
    for key, ours in (("seed", seed), ("seq_len", seq_len)):
        if state[key] != ours:
            raise ValueError(
                f"checkpointed data {key} = {state[key]} differs from the config's {ours}; "
                "resuming would change the data order"
            )
    if state["samples_consumed"] % batch:
        raise ValueError(
            f"checkpoint consumed {state['samples_consumed']} samples, not a multiple of the global batch "
            f"of {batch} sequences"
        )


def initial_data_state(seed: int, seq_len: int) -> dict:
    """The data state of step 0, the same in every mode: nothing consumed yet (a streaming run's per-stream
    positions start when its streams are known, at the first segment)."""
    return {"samples_consumed": 0, "seed": seed, "seq_len": seq_len}
