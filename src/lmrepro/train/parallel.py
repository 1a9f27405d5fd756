"""Parallelism applied from outside the model: device mesh and FSDP2.

Order (torchtitan's, kept so tensor parallel, activation checkpointing and compile slot in before
FSDP): TP → activation checkpointing → compile → FSDP. The model file knows nothing of this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lmrepro.config import ParallelConfig


@dataclass(frozen=True)
class ParallelDims:
    dp_replicate: int
    dp_shard: int
    tp: int
    world_size: int

    @property
    def dp_size(self) -> int:
        return self.dp_replicate * self.dp_shard


def resolve_parallel_dims(cfg: ParallelConfig, world_size: int) -> ParallelDims:
    """Fill dp_shard_degree = -1 from the world size; ValueError if the degrees do not multiply out."""
    for key in ("dp_replicate_degree", "tp_degree"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"parallel.{key} must be >= 1, got {getattr(cfg, key)}")
    other = cfg.dp_replicate_degree * cfg.tp_degree
    if cfg.dp_shard_degree == -1:
        if world_size % other:
            raise ValueError(
                f"world size {world_size} is not divisible by dp_replicate_degree × tp_degree = {other}"
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
    if cfg.tp_degree != 1:
        raise ValueError("parallel.tp_degree > 1 is not supported yet; valid: 1")
    return ParallelDims(cfg.dp_replicate_degree, dp_shard, cfg.tp_degree, world_size)


def build_mesh(dims: ParallelDims, device_type: str) -> DeviceMesh | None:
    if dims.world_size == 1:
        return None
    if dims.dp_replicate > 1:
        return init_device_mesh(
            device_type, (dims.dp_replicate, dims.dp_shard), mesh_dim_names=("dp_replicate", "dp_shard")
        )
    return init_device_mesh(device_type, (dims.dp_shard,), mesh_dim_names=("dp_shard",))


def apply_fsdp(model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype) -> None:
    """Shard each block, then the root; compute in param_dtype, reduce gradients in float32."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


def parallelize(
    model: nn.Module, dims: ParallelDims, mesh: DeviceMesh | None, param_dtype: torch.dtype
) -> None:
    if mesh is not None:
        apply_fsdp(model, mesh, param_dtype)


def dp_rank_and_size(dims: ParallelDims) -> tuple[int, int]:
    """This rank's position among data-parallel ranks (TP ranks of one group share a batch slice)."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank() // dims.tp, dims.dp_size
