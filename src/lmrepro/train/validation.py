"""In-loop validation: the held-out next-token loss every ``validation.every_steps`` inside the training
job, with no export and no job of its own, logged as ``val_loss`` beside the training loss.

The scored windows are fixed for the run: ``max_tokens // seq_len`` windows (a multiple of the
data-parallel size, at least one per rank) spread evenly over the split, so every validation scores the
same tokens and covers the split rather than its first documents. Data-parallel rank r scores windows
r, r + dp, r + 2·dp, …; every rank runs the same number of forwards (FSDP's collectives need that), and
the sums of loss and tokens are all-reduced (tensor-parallel ranks of one group score the same windows and
count them alike, so the ratio is unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lmrepro.config import ValidationConfig
from lmrepro.data.shards import TokenStream
from lmrepro.eval.loss import spread_window_starts


def window_starts(num_tokens: int, seq_len: int, max_tokens: int, dp_size: int) -> list[int]:
    """Start offsets of the scored windows of seq_len + 1 tokens, evenly spread over the stream (the loss
    evals' own choice, eval/loss.py, in a multiple of the data-parallel size)."""
    try:
        return spread_window_starts(num_tokens, seq_len, max_tokens, multiple_of=dp_size)
    except ValueError as e:
        raise ValueError(f"validation: {e}") from None


class Validator:
    def __init__(self, cfg: ValidationConfig, seq_len: int, dp_rank: int, dp_size: int, batch_sequences: int):
        self.every_steps = cfg.every_steps
        self.stream = TokenStream(Path(cfg.index).parent, verify_share=(dp_rank, dp_size))
        self.seq_len = seq_len
        starts = window_starts(len(self.stream), seq_len, cfg.max_tokens, dp_size)
        self.my_starts = starts[dp_rank::dp_size]
        self.batch_sequences = max(batch_sequences, 1)

    def due(self, step: int, last_step: int) -> bool:
        return self.every_steps > 0 and (step % self.every_steps == 0 or step == last_step)

    @torch.no_grad()
    def run(self, mean_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device) -> dict:
        """{"val_loss", "val_tokens"}; ``mean_loss(inputs, targets)`` is the training forward's loss."""
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        tokens = 0
        for first in range(0, len(self.my_starts), self.batch_sequences):
            starts = self.my_starts[first : first + self.batch_sequences]
            windows = np.stack([self.stream.window(s, self.seq_len + 1) for s in starts]).astype(np.int64)
            batch = torch.from_numpy(windows).to(device)
            loss = mean_loss(batch[:, :-1], batch[:, 1:])
            loss_sum += loss.double() * batch[:, 1:].numel()
            tokens += batch[:, 1:].numel()
        totals = torch.stack([loss_sum, torch.tensor(float(tokens), dtype=torch.float64, device=device)])
        if dist.is_initialized():
            dist.all_reduce(totals)
        return {"val_loss": float(totals[0] / totals[1]), "val_tokens": int(totals[1])}
