"""Parallelism applied from outside the model, in torchtitan's order:

    tensor parallel (+ sequence parallel, loss parallel) → activation checkpointing → torch.compile → FSDP2

TP first, because it rewrites the Linear weights into DTensors on the tp mesh; AC and compile wrap
whole blocks (compile sees the TP collectives and the recomputation); FSDP last, so it shards the
already-TP'd parameters along the data-parallel mesh. The model file knows nothing of this.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from lmrepro.model.losses import compile_chunk_step
from lmrepro.train.parallel_dims import ParallelDims, resolve_parallel_dims  # noqa: F401 (re-exported)


def build_mesh(dims: ParallelDims, device_type: str) -> DeviceMesh | None:
    """Mesh dims (dp_replicate, dp_shard, tp), tp innermost so TP groups are ranks of one node."""
    if dims.world_size == 1:
        return None
    shape, names = [], []
    if dims.dp_replicate > 1:  # HSDP keeps both dp dims, even when dp_shard is 1
        shape += [dims.dp_replicate, dims.dp_shard]
        names += ["dp_replicate", "dp_shard"]
    elif dims.dp_shard > 1:
        shape.append(dims.dp_shard)
        names.append("dp_shard")
    if dims.tp > 1:
        shape.append(dims.tp)
        names.append("tp")
    return init_device_mesh(device_type, tuple(shape), mesh_dim_names=tuple(names))


def dp_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    if mesh is None:
        return None
    names = tuple(n for n in ("dp_replicate", "dp_shard") if n in mesh.mesh_dim_names)
    return mesh[names] if names else None


def tp_mesh(mesh: DeviceMesh | None) -> DeviceMesh | None:
    return mesh["tp"] if mesh is not None and "tp" in mesh.mesh_dim_names else None


def apply_tp(model: nn.Module, mesh: DeviceMesh, loss_parallel: bool) -> None:
    """Megatron-style TP with sequence parallel: norms and the residual stream are sharded on the
    sequence dim, attention/FFN inputs are all-gathered, their outputs reduce-scattered."""
    parallelize_module(
        model,
        mesh,
        {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
            "norm": SequenceParallel(),
            "output": ColwiseParallel(
                input_layouts=Shard(1),
                output_layouts=Shard(-1) if loss_parallel else Replicate(),
                use_local_output=not loss_parallel,
            ),
        },
    )
    for block in model.layers.children():
        plan = {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(
                input_layouts=(Shard(1), None), desired_input_layouts=(Replicate(), None)
            ),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
            ),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        }
        parallelize_module(block, mesh, plan)


def _op_sac_policy():
    """Selective AC: keep matmul and attention outputs, recompute the cheap pointwise ops and norms."""
    from torch.utils.checkpoint import CheckpointPolicy

    save = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
    for name in (
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
    ):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            save.add(op.default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in save else CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def apply_ac(model: nn.Module, mode: str) -> None:
    """Activation checkpointing per block: full (recompute the block) or selective (op-level policy)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    policy = _op_sac_policy()
    for name, block in list(model.layers.named_children()):
        if mode == "full":
            wrapped = checkpoint_wrapper(block, preserve_rng_state=False)
        else:
            wrapped = checkpoint_wrapper(
                block,
                preserve_rng_state=False,
                context_fn=lambda: create_selective_checkpoint_contexts(policy),
            )
        model.layers.register_module(name, wrapped)


def apply_compile(model: nn.Module, mode: str = "default") -> None:
    """Compile each block separately: the blocks share one graph, so compile time does not grow with depth."""
    for name, block in list(model.layers.named_children()):
        model.layers.register_module(name, torch.compile(block, fullgraph=True, mode=mode))


def apply_fsdp(
    model: nn.Module, mesh: DeviceMesh, param_dtype: torch.dtype, reshard_after_forward: bool
) -> None:
    """Shard each block, then the root; compute in param_dtype, reduce gradients in float32."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    blocks = list(model.layers.children())
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again right away by backward: keep them gathered.
        fully_shard(
            block,
            mesh=mesh,
            mp_policy=mp,
            reshard_after_forward=reshard_after_forward and i < len(blocks) - 1,
        )
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)


def parallelize(
    model: nn.Module,
    mesh: DeviceMesh | None,
    param_dtype: torch.dtype,
    *,
    activation_checkpoint: str = "none",
    compile: bool = False,
    compile_mode: str = "default",
    loss_parallel: bool = True,
    reshard_after_forward: bool = True,
) -> None:
    """Apply TP → AC → compile → FSDP to a model built on the meta device."""
    if (tp := tp_mesh(mesh)) is not None:
        apply_tp(model, tp, loss_parallel=loss_parallel)
    if activation_checkpoint != "none":
        apply_ac(model, activation_checkpoint)
    if compile:
        apply_compile(model, compile_mode)
        compile_chunk_step()
    if (dp := dp_mesh(mesh)) is not None:
        apply_fsdp(model, dp, param_dtype, reshard_after_forward=reshard_after_forward)


def dp_rank_and_size(dims: ParallelDims) -> tuple[int, int]:
    """This rank's position among data-parallel ranks (the TP ranks of one group share a batch slice)."""
    if not dist.is_initialized():
        return 0, 1
    return dist.get_rank() // dims.tp, dims.dp_size
