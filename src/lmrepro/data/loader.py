"""A stateful, rank-aware loader of fixed-length training windows from a token stream.

The data order is a pure function of (seed, global sample index): the stream is cut into windows of
seq_len + 1 tokens (consecutive windows overlap by one token so every token is a target once), and each
epoch visits the windows in a permutation seeded by (seed, epoch). Global batch b holds the samples
[b·B, (b+1)·B); data-parallel rank r takes a contiguous slice of it. The loader's whole state is the
number of samples consumed, so resuming is exact and works when the number of ranks changes.
"""

from __future__ import annotations

import numpy as np
import torch

from lmrepro.data.shards import TokenStream


class WindowLoader:
    def __init__(
        self,
        stream: TokenStream,
        *,
        seq_len: int,
        global_batch_sequences: int,
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
    ):
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is not in [0, {dp_size})")
        if global_batch_sequences % dp_size:
            raise ValueError(
                f"global batch of {global_batch_sequences} sequences does not split over {dp_size} "
                "data-parallel ranks"
            )
        self.num_windows = (len(stream) - 1) // seq_len
        if self.num_windows < 1:
            raise ValueError(
                f"{stream.index_path}: {len(stream)} tokens are too few for one window of "
                f"{seq_len + 1} tokens"
            )
        self.stream = stream
        self.seq_len = seq_len
        self.global_batch_sequences = global_batch_sequences
        self.local_batch_sequences = global_batch_sequences // dp_size
        self.dp_rank = dp_rank
        self.seed = seed
        self.samples_consumed = 0
        self._epoch = -1
        self._order: np.ndarray | None = None

    def _window_id(self, sample: int) -> int:
        epoch, position = divmod(sample, self.num_windows)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.num_windows)
            self._epoch = epoch
        return int(self._order[position])

    def sample_ids(self, batch_index: int) -> list[int]:
        """Window ids this rank reads for global batch `batch_index` (used by audits and tests)."""
        first = batch_index * self.global_batch_sequences + self.dp_rank * self.local_batch_sequences
        return [self._window_id(s) for s in range(first, first + self.local_batch_sequences)]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's (inputs, targets), each [local_batch_sequences, seq_len] int64."""
        batch_index = self.samples_consumed // self.global_batch_sequences
        rows = [self.stream.window(w * self.seq_len, self.seq_len + 1) for w in self.sample_ids(batch_index)]
        windows = torch.from_numpy(np.stack(rows))  # [local_batch, seq_len + 1]
        self.samples_consumed += self.global_batch_sequences
        return windows[:, :-1], windows[:, 1:]

    def state_dict(self) -> dict:
        return {"samples_consumed": self.samples_consumed, "seed": self.seed, "seq_len": self.seq_len}

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "seq_len"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"checkpointed data {key} = {state[key]} differs from the config's {getattr(self, key)}; "
                    "resuming would change the data order"
                )
        if state["samples_consumed"] % self.global_batch_sequences:
            raise ValueError(
                f"checkpoint consumed {state['samples_consumed']} samples, not a multiple of the "
                f"global batch "
                f"of {self.global_batch_sequences} sequences"
            )
        self.samples_consumed = state["samples_consumed"]
