"""The parallel degrees of a job (dp_replicate × dp_shard × tp), checked against its world size and model
before any process group exists; without torch, so that the workflow checks them at DAG-building time."""

from __future__ import annotations

from dataclasses import dataclass

from lmrepro.config import ParallelConfig
from lmrepro.model.args import ModelArgs


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard


def resolve_parallel_dims(
    cfg: ParallelConfig, world_size: int, model_args: ModelArgs | None = None
) -> ParallelDims:
    """Check the degrees against the world size and the model before any process group exists.

    dp_shard_degree = -1 takes every rank the other degrees leave. Raises ValueError naming the key.
    """
    for key in ("dp_replicate_degree", "tp_degree"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"parallel.{key} must be >= 1, got {getattr(cfg, key)}")
    other = cfg.dp_replicate_degree * cfg.tp_degree
    if cfg.dp_shard_degree == -1:
        if world_size % other:
            raise ValueError(
                f"world size {world_size} is not divisible by parallel.dp_replicate_degree × tp_degree "
                f"= {cfg.dp_replicate_degree} × {cfg.tp_degree}"
            )
        dp_shard = world_size // other
    elif cfg.dp_shard_degree < 1:
        raise ValueError(f"parallel.dp_shard_degree must be >= 1 or -1 (auto), got {cfg.dp_shard_degree}")
    else:
        dp_shard = cfg.dp_shard_degree
    if dp_shard * other != world_size:
        raise ValueError(
            f"parallel degrees replicate {cfg.dp_replicate_degree} × shard {dp_shard} × tp {cfg.tp_degree} "
            f"= {dp_shard * other} do not equal the world size {world_size}"
        )
    if isinstance(model_args, ModelArgs) and cfg.tp_degree > 1:
        for key in ("n_heads", "n_kv_heads"):
            if getattr(model_args, key) % cfg.tp_degree:
                raise ValueError(
                    f"parallel.tp_degree = {cfg.tp_degree} does not divide the model's {key} = "
                    f"{getattr(model_args, key)}"
                )
        if model_args.ffn_dim % cfg.tp_degree:
            raise ValueError(
                f"parallel.tp_degree = {cfg.tp_degree} does not divide ffn_dim = {model_args.ffn_dim}"
            )
        if model_args.tie_embeddings:
            raise ValueError(
                "parallel.tp_degree > 1 needs untied embeddings (model.overrides.tie_embeddings)"
            )
    return ParallelDims(cfg.dp_replicate_degree, dp_shard, cfg.tp_degree, world_size)
