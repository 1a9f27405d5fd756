"""How a job's model and batch map onto its ranks, derived and checked before any process group exists (and,
for a Llama flavor, without torch: the workflow plans every run's layout while it builds the DAG)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lmrepro.config import JobConfig, check_streams
from lmrepro.model.flavors import model_args
from lmrepro.train.parallel_dims import ParallelDims, resolve_parallel_dims

if TYPE_CHECKING:
    from lmrepro.model.build import ModelSpec


def checked_model_args(job: JobConfig) -> ModelSpec:
    """The run's model: a Llama flavor (+ overrides), or the transformers config of ``model.hf``."""
    hf = job.model.hf
    if hf.enabled:
        from lmrepro.model.hf_causal import hf_causal_args  # torch: a Llama flavor is checked without it

        args = hf_causal_args(hf.config, hf.model_type, hf.config_values, job.model.vocab_size)
        limit, fix = args.max_seq_len, "model.hf.config_values.max_position_embeddings"
    else:
        args = model_args(job.model.flavor, job.model.vocab_size, **job.model.overrides)
        limit, fix = args.max_seq_len, "model.overrides.max_seq_len"
    if limit is not None and job.data.seq_len > limit:
        raise ValueError(
            f"data.seq_len = {job.data.seq_len} exceeds the model's max_seq_len = {limit} "
            f"({job.model.flavor if not hf.enabled else args.model_type}); lower data.seq_len or set {fix}"
        )
    return args


@dataclass(frozen=True)
class Layout:
    """How a job's batch and model map onto its ranks; derived and checked before any process group."""

    dims: ParallelDims
    model_args: ModelSpec
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
