"""The training objective (lmrepro.train.objective): causal batches pass through untouched; MLM batches are
masked by (seed, global sample index), so the masks of a global batch are the same on every data-parallel
size, after a resume and on every tensor-parallel rank; the loss normaliser is the global masked count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_loader import GLOBAL_BATCH, NUM_TOKENS, SEQ_LEN, VOCAB, loader, write_stream

from lmrepro.config import TrainingConfig
from lmrepro.data.masking import IGNORE_INDEX, MaskingConfig, mask_batch
from lmrepro.data.shards import TokenStream
from lmrepro.train.objective import CausalObjective, MaskedObjective, build_objective

MASKING = MaskingConfig(mask_ratio=0.3, mask_token_id=VOCAB - 1, vocab_size=VOCAB, never_mask_ids=(0,))


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory) -> TokenStream:
    """Token id = stream position (test_loader's layout), three shards."""
    index = write_stream(
        tmp_path_factory.mktemp("shards"), np.arange(NUM_TOKENS) % VOCAB, cuts=[3_333, 6_001]
    )
    return TokenStream(index.parent)


def rank_batches(stream: TokenStream, dp_size: int, batches: int, skip: int = 0) -> list[list[tuple]]:
    """Per batch, per rank: (window tokens, global sample indices) as the trainer receives them."""
    out = []
    loaders = [loader(stream, dp_rank=r, dp_size=dp_size) for r in range(dp_size)]
    if skip:
        for ld in loaders:
            ld.load_state_dict({"samples_consumed": skip * GLOBAL_BATCH, "seed": 0, "seq_len": SEQ_LEN})
    for _ in range(batches):
        step = []
        for ld in loaders:
            inputs, _ = ld.next_batch()
            step.append((inputs, ld.last_sample_indices))
        out.append(step)
    return out


def test_sample_indices_are_positions_in_the_global_batch(stream: TokenStream) -> None:
    for dp in (1, 2, 4):
        for b, step in enumerate(rank_batches(stream, dp, 3)):
            assert [i for _, idx in step for i in idx] == list(
                range(b * GLOBAL_BATCH, (b + 1) * GLOBAL_BATCH)
            )


def test_mlm_windows_are_seq_len_tokens_consecutive_and_disjoint(stream: TokenStream) -> None:
    ld = loader(stream)
    inputs, _ = ld.next_batch()
    assert inputs.shape == (GLOBAL_BATCH, SEQ_LEN)
    for row, window in zip(inputs, ld.sample_ids(0), strict=True):  # token id = its stream position
        assert row.tolist() == list(range(window * SEQ_LEN, (window + 1) * SEQ_LEN))


def masked(step: list[tuple], seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    objective = MaskedObjective(MASKING, seed, dp_size=1, tp_size=1)
    parts = [objective.step_batch(x, x, idx) for x, idx in step]
    return torch.cat([p.inputs for p in parts]), torch.cat([p.labels for p in parts])


def test_masks_equal_on_every_dp_size_and_after_resume(stream: TokenStream) -> None:
    one, two, four = (rank_batches(stream, dp, 4) for dp in (1, 2, 4))
    resumed = rank_batches(stream, 2, 2, skip=2)  # a 2-rank resume at step 2 of a 1-rank run
    for b in range(4):
        x, y = masked(one[b])
        assert (y != IGNORE_INDEX).any() and (x == MASKING.mask_token_id).any()
        for other in (two[b], four[b]) + ((resumed[b - 2],) if b >= 2 else ()):
            ox, oy = masked(other)
            assert torch.equal(ox, x) and torch.equal(oy, y)
    # another seed, other masks: the masks do depend on the run's seed
    assert not torch.equal(masked(one[0], seed=6)[1], masked(one[0])[1])


def test_tensor_parallel_ranks_mask_alike(stream: TokenStream) -> None:
    """TP ranks of one dp group get the same rows and sample indices (dp_rank = rank // tp) and nothing
    else enters the mask: two independent objectives (two TP ranks) agree, with no communication."""
    ((x, idx),) = rank_batches(stream, 1, 1)[0]
    a = MaskedObjective(MASKING, 5, dp_size=1, tp_size=2).masking
    b = MaskedObjective(MASKING, 5, dp_size=1, tp_size=2).masking
    assert all(
        torch.equal(p, q) for p, q in zip(mask_batch(x, idx, 5, a), mask_batch(x, idx, 5, b), strict=True)
    )


def test_normaliser_is_the_global_count_over_dp_size(stream: TokenStream) -> None:
    ((x, idx),) = rank_batches(stream, 1, 1)[0]
    batch = MaskedObjective(MASKING, 5, dp_size=1, tp_size=1).step_batch(x, x, idx)
    count = int((batch.labels != IGNORE_INDEX).sum())
    assert batch.labelled_tokens == count and batch.normaliser == count and batch.loss_divisor == 1
    # labels are the original tokens, unshifted, at the masked positions only
    sel = batch.labels != IGNORE_INDEX
    assert torch.equal(batch.labels[sel], x[sel]) and torch.all(batch.inputs[sel] == MASKING.mask_token_id)
    assert torch.equal(batch.inputs[~sel], x[~sel])
    # Under FSDP (which averages gradients over dp) each rank divides by count / dp.
    assert MaskedObjective(MASKING, 5, dp_size=4, tp_size=1).step_batch(x, x, idx).normaliser == count / 4


def test_causal_objective_is_the_identity() -> None:
    x, y = torch.arange(6).reshape(2, 3), torch.arange(1, 7).reshape(2, 3)
    batch = CausalObjective(grad_accum_steps=4).step_batch(x, y, [0, 1])
    assert batch.inputs is x and batch.labels is y and batch.normaliser is None and batch.loss_divisor == 4


def test_build_objective_needs_the_workflow_s_mask_id() -> None:
    training = TrainingConfig(objective="mlm")
    with pytest.raises(ValueError, match="training.mlm.mask_token_id is not set"):
        build_objective(training, vocab_size=100, grad_accum_steps=1, dp_size=1, tp_size=1)
    training.mlm.mask_token_id, training.mlm.never_mask_ids = 2, [0, 1, 2]
    objective = build_objective(training, vocab_size=100, grad_accum_steps=1, dp_size=1, tp_size=1)
    assert objective.masking.never_mask_ids == (0, 1, 2) and objective.masking.mask_ratio == 0.3
