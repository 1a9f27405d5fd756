"""How a job's model and batch map onto its ranks, derived and checked before any process group exists."""

from __future__ import annotations

from dataclasses import dataclass

from lmrepro.config import JobConfig, check_streams
from lmrepro.model.flavors import model_args
from lmrepro.model.llama import ModelArgs
from lmrepro.train.parallel import ParallelDims, resolve_parallel_dims


def checked_model_args(job: JobConfig) -> ModelArgs:
    args = model_args(job.model.flavor, job.model.vocab_size, **job.model.overrides)
    if job.data.seq_len > args.max_seq_len:
        raise ValueError(
            f"data.seq_len = {job.data.seq_len} exceeds the model's max_seq_len = {args.max_seq_len} "
            f"(flavor {job.model.flavor}); lower data.seq_len or set model.overrides.max_seq_len"
        )
    return args


@dataclass(frozen=True)
class Layout:
    """How a job's batch and model map onto its ranks; derived and checked before any process group."""

    dims: ParallelDims
    model_args: ModelArgs
    global_batch_sequences: int
    local_batch_sequences: int
    micro_batch_sequences: int
    grad_accum_steps: int


def plan_layout(job: JobConfig, world_size: int) -> Layout:
    """Validate flavor, parallel degrees and batch arithmetic for `world_size` ranks (names the bad key)."""
    args = checked_model_args(job)
    dims = resolve_parallel_dims(job.parallel, world_size, args)
    seq_len = job.data.seq_len
    global_sequences = job.training.global_batch_tokens // seq_len
    if global_sequences % dims.dp_size:
        raise ValueError(
            f"training.global_batch_tokens = {job.training.global_batch_tokens} is not divisible by "
            f"data.seq_len × data-parallel ranks = {seq_len} × {dims.dp_size}"
        )
    if job.data.mode == "streaming":
        check_streams(job.data.streaming.streams, global_sequences, dims.dp_size)
    local_sequences = global_sequences // dims.dp_size
    micro = job.training.micro_batch_sequences or local_sequences
    if local_sequences % micro:
        raise ValueError(
            f"training.micro_batch_sequences = {micro} does not divide the local batch of "
            f"{local_sequences} sequences per data-parallel rank"
        )
    return Layout(dims, args, global_sequences, local_sequences, micro, local_sequences // micro)
