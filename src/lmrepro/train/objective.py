"""The training objective: what a loader batch becomes, and how each micro-batch's loss is normalised.

``causal`` (next-token): the loader's (inputs, targets) as they are; each micro-batch's loss is its mean,
backpropagated divided by the gradient-accumulation steps (FSDP then averages over data-parallel ranks).

``mlm`` (the torchtitan-mlm seed, issue 14): the window is the loader's ``inputs`` (seq_len tokens; the
windows of a source are consecutive and disjoint), masked by :func:`lmrepro.data.masking.mask_batch` with
the run's ``training.seed`` and each row's global sample index, so masks are identical after a resume, on
any data-parallel size and on every tensor-parallel rank of a data-parallel group. Labels are the original
tokens at the selected positions (no shift) and IGNORE_INDEX elsewhere.

The MLM loss is the mean over the masked tokens of the whole global batch, not a mean of micro-batch
means (:mod:`lmrepro.model.masked_loss`): the step's masked-token count is summed over all ranks once
(host tensors, gloo), every micro-batch's loss is its sum divided by that count, and the accumulated
gradients are therefore those of the global mean whatever the micro-batch split. FSDP averages gradients
over the dp ranks, so the count is divided by the dp size first (each rank's gradient carries dp times
its share, the average gives the global mean).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmrepro.config import TrainingConfig
from lmrepro.data.masking import IGNORE_INDEX, MaskingConfig, mask_batch


@dataclass
class StepBatch:
    """One rank's batch of a step, ready for the micro-batch loop."""

    inputs: torch.Tensor  # [local_batch, seq_len] int64
    labels: torch.Tensor  # [local_batch, seq_len] int64 (IGNORE_INDEX: no loss)
    normaliser: float | None  # each micro-batch's loss = its label sum / this; None: its mean
    loss_divisor: int  # backward(loss / loss_divisor); the step's loss = sum of micro losses / this
    labelled_tokens: int = 0  # mlm: masked tokens in the global batch (a metrics column)


class CausalObjective:
    name = "causal"

    def __init__(self, grad_accum_steps: int):
        self.grad_accum_steps = grad_accum_steps

    def step_batch(self, inputs: torch.Tensor, targets: torch.Tensor, sample_indices: list[int]) -> StepBatch:
        return StepBatch(inputs, targets, None, self.grad_accum_steps)


class MaskedObjective:
    name = "mlm"

    def __init__(
        self,
        masking: MaskingConfig,
        seed: int,
        *,
        dp_size: int,
        tp_size: int,
        host_group: dist.ProcessGroup | None = None,
    ):
        self.masking = masking
        self.seed = seed
        self.dp_size = dp_size
        self.tp_size = tp_size
        self.host_group = host_group  # a gloo group over all ranks (None: the default group)

    def global_count(self, labels: torch.Tensor) -> int:
        """Masked tokens of the global batch: this rank's count summed over dp (each TP rank holds its
        dp group's labels, so the sum over all ranks counts every dp group tp times)."""
        count = (labels != IGNORE_INDEX).sum().reshape(1)  # int64, on the host
        if dist.is_initialized():
            dist.all_reduce(count, op=dist.ReduceOp.SUM, group=self.host_group)
        total, rest = divmod(int(count.item()), self.tp_size)
        assert rest == 0, "tensor-parallel ranks of one data-parallel group disagree on their masks"
        return total

    def step_batch(self, inputs: torch.Tensor, targets: torch.Tensor, sample_indices: list[int]) -> StepBatch:
        masked, labels = mask_batch(inputs, sample_indices, self.seed, self.masking)
        count = self.global_count(labels)
        # max(…, 1): a batch without a masked token (tiny ratio) has loss 0 and no gradient, not NaN
        return StepBatch(masked, labels, max(count, 1) / self.dp_size, 1, count)


def build_objective(
    training: TrainingConfig,
    *,
    vocab_size: int,
    grad_accum_steps: int,
    dp_size: int,
    tp_size: int,
    host_group: dist.ProcessGroup | None = None,
) -> CausalObjective | MaskedObjective:
    if training.objective == "causal":
        return CausalObjective(grad_accum_steps)
    mlm = training.mlm
    if mlm.mask_token_id < 0:
        raise ValueError(
            "training.mlm.mask_token_id is not set: the workflow sets it from training.mlm.mask_token and "
            "the run's tokenizer (lmrepro.workflow.tokenizer_mlm_ids)"
        )
    masking = MaskingConfig(
        mask_ratio=mlm.mask_ratio,
        mask_token_id=mlm.mask_token_id,
        vocab_size=vocab_size,
        never_mask_ids=tuple(mlm.never_mask_ids),
        replacement=mlm.replacement,
    )
    return MaskedObjective(masking, training.seed, dp_size=dp_size, tp_size=tp_size, host_group=host_group)
