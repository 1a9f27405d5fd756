"""Masked-LM loss as (sum, normaliser), so the loss is the mean over the masked tokens of the GLOBAL batch.

Trainer contract (what makes GAS 4 = GAS 1 and 2 ranks = 1, exactly in fp32 up to summation order):

1. On each rank, compute ``normaliser`` for every micro-batch of the step (labels are known before the
   forward) and sum them: ``local = sum_mb normaliser_mb``.
2. All-reduce (SUM) ``local`` over the data-parallel group once per step -> ``global_normaliser``
   (:func:`global_normaliser`); TP ranks of one dp group see the same labels and must not be summed.
3. For each micro-batch, ``backward(loss_sum_mb / global_normaliser)``.
4. Reduce gradients over dp with SUM, not mean (FSDP/DDP average by default: multiply by the dp size,
   or set the reduce op to SUM). The reported loss is ``all_reduce_sum(sum_mb loss_sum_mb) /
   global_normaliser``.

A mean of micro-batch means (``loss_mb / GAS``) weights a token by 1/(its micro-batch's mask count) and so
depends on how the global batch is split; this does not.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

IGNORE_INDEX = -100


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., V], labels [...] (IGNORE_INDEX = unlabelled), optional weights [...] ->
    (loss_sum, normaliser), both fp32 scalars. No shift: labels[i] is the target of logits[i].

    ``loss_sum`` is the (weighted) sum of the cross-entropies of the labelled targets; ``normaliser`` is
    their number, or the sum of their weights (detached). See the module docstring for the contract.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    flat_labels = labels.reshape(-1)
    ce = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )  # 0 at ignored positions
    valid = flat_labels != IGNORE_INDEX
    if weights is None:
        return ce.sum(), valid.sum().to(torch.float32)
    if weights.shape != labels.shape:
        raise ValueError(f"weights {tuple(weights.shape)} do not match labels {tuple(labels.shape)}")
    w = torch.where(valid, weights.reshape(-1).float(), torch.zeros((), device=ce.device))
    return (ce * w).sum(), w.sum().detach()


def global_normaliser(local_sum: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Step 2 of the contract: ``local_sum`` summed over the dp ``group`` (itself when not distributed)."""
    total = local_sum.detach().clone().to(torch.float32)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total
