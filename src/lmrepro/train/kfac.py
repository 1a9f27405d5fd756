"""K-FAC: a Kronecker-factored preconditioner for the nn.Linear layers of a model, correct with accumulation.

After Martens & Grosse 2015 (K-FAC), Grosse & Martens 2016 and Ba et al. 2017 (eigendecomposition, damping,
KL clipping), as in the llm-pytorch seed (`--kfac`, which used kfac-pytorch). For a layer y = W a (+ b):

    A = E[ā āᵀ], ā = [a, 1] with a bias column;  G = E[g gᵀ], g = dℓ/dy of the per-row loss,
    both running averages F ← decay·F + (1 − decay)·F_step (the first update sets F), every
    `factor_update_steps`; eigendecompositions A = V_A diag(λ_A) V_Aᵀ, G = V_G diag(λ_G) V_Gᵀ every
    `inv_update_steps`; the gradient ∇ = [∇W | ∇b] becomes V_G [(V_Gᵀ ∇ V_A) / (λ_G λ_Aᵀ + damping)] V_Aᵀ,
    then all are scaled by ν = min(1, sqrt(kl_clip / (lr² Σ ⟨precond, ∇⟩))) (KL clipping).

The preconditioned gradient replaces `.grad` and goes to the seed's optimizer, `torch.optim.AdamW` (the seed
is HF `run_clm_no_trainer.py`: AdamW, no weight decay on biases and LayerNorm weights, lr from the
scheduler; K-FAC runs right before `optimizer.step()`).

Gradient accumulation (the seed preconditioned on the first micro-batch of a window while the optimizer
stepped on the last): hooks only *sum* ā āᵀ and g gᵀ over every micro-batch of a step; `step(lr)`, called
once after the last micro-step and before `optimizer.step()`, turns the sums into one running-average
update and preconditions the full gradient once. The backpropagated gradients are those of the mean loss of
the step's n rows on this rank (micro-batch means divided by GAS, as `Trainer.forward_backward` does), so
g_row = (dℓ_row/dy) / n and G_step = n² Σ g gᵀ / n: the factors do not depend on how the batch is split.

    kfac = KFAC(model, KFACConfig(factor_update_steps=5, inv_update_steps=50))
    for micro in batches: (loss(micro) / gas).backward()   # hooks collect; nothing else to call
    kfac.step(lr)                                           # lr of this step, from the schedule
    optimizer.step(); optimizer.zero_grad()

Data parallel (DDP / replicated gradients): the sums and row counts are all-reduced over `group` (the
default group when torch.distributed is initialised) before each factor update, so every rank holds the
same factors and inverses (each rank computes all eigendecompositions; nothing is distributed).
Tensor parallel is refused (DTensor-sharded Linear weights on a `tp` mesh: `parallel.tp_degree` must be 1).
FSDP2 / HSDP work: the hooks see the unsharded activations and output gradients of the local rows, so the
factors are reduced exactly as under DDP; `.grad` is a Shard(0) DTensor, so each layer's gradient is
all-gathered (`full_tensor`), preconditioned whole (identically on every rank) and each rank keeps its own
rows — one all-gather of the gradients per step. Activation checkpointing and compile are refused by the
trainer's config (the recomputed forward would run the hooks again).
GPT-2's `transformers.pytorch_utils.Conv1D` is refused: use GPT-Neo / GPT-NeoX / Llama (nn.Linear).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmrepro.config import KFACOptions


@dataclass
class KFACConfig:
    factor_update_steps: int = 1
    inv_update_steps: int = 1
    factor_decay: float = 0.95
    damping: float = 0.001
    kl_clip: float | None = 0.001  # None: no KL clipping
    skip_modules: tuple[str, ...] = ("lm_head", "output")  # module names (or name suffixes) left alone
    inv_dtype: str = "float32"  # eigendecomposition dtype (at least the factors' dtype)

    def __post_init__(self):
        if self.factor_update_steps < 1 or self.inv_update_steps < 1:
            raise ValueError("kfac: factor_update_steps and inv_update_steps must be >= 1")
        if not 0.0 <= self.factor_decay < 1.0:
            raise ValueError(f"kfac: factor_decay must be in [0, 1), got {self.factor_decay}")
        if self.damping < 0 or (self.kl_clip is not None and self.kl_clip <= 0):
            raise ValueError("kfac: damping must be >= 0 and kl_clip > 0 (or None)")
        if self.inv_dtype not in ("float32", "float64"):
            raise ValueError(f"kfac: inv_dtype must be float32 or float64, got {self.inv_dtype!r}")


def _skipped(name: str, skip: tuple[str, ...]) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


def _is_conv1d(module: nn.Module) -> bool:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return False
    return isinstance(module, Conv1D)


DATA_PARALLEL_MESH_DIMS = {"dp_shard", "dp_replicate"}  # FSDP2 / HSDP meshes (train/parallel.py)


def _check_layout(model: nn.Module, name: str, module: nn.Linear) -> None:
    from torch.distributed.tensor import DTensor

    weight = module.weight
    if not isinstance(weight, DTensor):
        return
    dims = set(weight.device_mesh.mesh_dim_names or ())
    if dims <= DATA_PARALLEL_MESH_DIMS:  # FSDP2 / HSDP: gathered per layer in step()
        return
    raise ValueError(
        f"kfac: {name!r} has a DTensor-sharded weight ({weight.placements} on mesh dims {sorted(dims)}): "
        "tensor parallel is not supported by K-FAC, set parallel.tp_degree = 1"
    )


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (FSDP-sharded) DTensor gradient; a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _assign(dest: torch.Tensor, full: torch.Tensor) -> None:
    """Copy `full` (the same on every rank) into `dest`, or into this rank's shard of a DTensor `dest`."""
    if not hasattr(dest, "to_local"):
        dest.copy_(full)
        return
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank holds `full` already and cuts its own shard, no communication.
    local = distribute_tensor(full, dest.device_mesh, dest.placements, src_data_rank=None).to_local()
    dest.to_local().copy_(local)


class _Layer:
    """Per-layer state: step sums, running factors, eigendecompositions."""

    def __init__(self, module: nn.Linear):
        self.module = module
        self.has_bias = module.bias is not None
        self.a_sum = self.g_sum = None  # Σ ā āᵀ, Σ g gᵀ of this step (this rank)
        self.rows = 0
        self.A = self.G = None
        self.QA = self.dA = self.QG = self.dG = None

    def collect(self, a: torch.Tensor, g: torch.Tensor) -> None:
        dtype = torch.promote_types(a.dtype, torch.float32)
        a = a.detach().reshape(-1, a.shape[-1]).to(dtype)
        g = g.detach().reshape(-1, g.shape[-1]).to(dtype)
        if self.has_bias:
            a = torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)
        aa, gg = a.T @ a, g.T @ g
        self.a_sum = aa if self.a_sum is None else self.a_sum + aa
        self.g_sum = gg if self.g_sum is None else self.g_sum + gg
        self.rows += a.shape[0]

    def step_sums(self) -> list[torch.Tensor]:
        """[Σ ā āᵀ, n² Σ g gᵀ, n]: summed over ranks, then divided by Σ n, they give A_step and G_step."""
        w = self.module.weight
        n_in, n_out = w.shape[1] + self.has_bias, w.shape[0]
        dtype = self.a_sum.dtype if self.a_sum is not None else torch.promote_types(w.dtype, torch.float32)
        if self.a_sum is None:
            return [
                w.new_zeros(n_in, n_in, dtype=dtype),
                w.new_zeros(n_out, n_out, dtype=dtype),
                w.new_zeros(1, dtype=dtype),
            ]
        n = float(self.rows)
        return [self.a_sum, self.g_sum * (n * n), torch.full((1,), n, dtype=dtype, device=w.device)]

    def update_factors(self, a_sum, g_sum, n, decay: float) -> None:
        self.a_sum = self.g_sum = None
        self.rows = 0
        if n.item() == 0:  # the layer saw no rows on any rank in this step
            return
        A, G = a_sum / n, g_sum / n
        if self.A is None:
            self.A, self.G = A, G
        else:
            self.A = decay * self.A + (1 - decay) * A
            self.G = decay * self.G + (1 - decay) * G

    def update_inverse(self, inv_dtype: torch.dtype) -> None:
        if self.A is None:
            return
        dtype = torch.promote_types(self.A.dtype, inv_dtype)
        dA, QA = torch.linalg.eigh(self.A.to(dtype))
        dG, QG = torch.linalg.eigh(self.G.to(dtype))
        self.dA, self.QA = dA.clamp_(min=0.0), QA
        self.dG, self.QG = dG.clamp_(min=0.0), QG

    def grad(self) -> torch.Tensor | None:
        m = self.module
        if m.weight.grad is None:
            return None
        weight = _full(m.weight.grad)
        if not self.has_bias:
            return weight
        bias = _full(m.bias.grad) if m.bias.grad is not None else weight.new_zeros(weight.shape[0])
        return torch.cat([weight, bias[:, None]], dim=1)

    def precondition(self, grad: torch.Tensor, damping: float) -> torch.Tensor:
        g = grad.to(self.QA.dtype)
        v = self.QG.T @ g @ self.QA
        v = v / (self.dG[:, None] * self.dA[None, :] + damping)
        return (self.QG @ v @ self.QA.T).to(grad.dtype)

    def set_grad(self, grad: torch.Tensor) -> None:
        m = self.module
        if self.has_bias:
            _assign(m.weight.grad, grad[:, :-1])
            if m.bias.grad is not None:
                _assign(m.bias.grad, grad[:, -1].contiguous())
        else:
            _assign(m.weight.grad, grad)

    def state_shapes(self, inv_dtype: torch.dtype) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every saved state entry, known before the first update (a DCP template)."""
        w = self.module.weight
        n_in, n_out = w.shape[1] + self.has_bias, w.shape[0]
        factor = torch.promote_types(w.dtype, torch.float32)
        inv = torch.promote_types(factor, inv_dtype)
        return {
            "A": ((n_in, n_in), factor),
            "G": ((n_out, n_out), factor),
            "QA": ((n_in, n_in), inv),
            "dA": ((n_in,), inv),
            "QG": ((n_out, n_out), inv),
            "dG": ((n_out,), inv),
        }


class KFAC:
    """K-FAC over every nn.Linear of `model` except `config.skip_modules`, or over the named `modules`."""

    _STATE = ("A", "G", "QA", "dA", "QG", "dG")

    def __init__(
        self,
        model: nn.Module,
        config: KFACConfig | None = None,
        modules: list[str] | None = None,
        group: dist.ProcessGroup | None = None,
    ):
        self.config = config or KFACConfig()
        self.group = group
        self.steps = 0  # completed `step` calls
        self.layers: dict[str, _Layer] = {}
        named = dict(model.named_modules())
        for name in modules or []:
            if name not in named:
                raise ValueError(f"kfac: the model has no module {name!r}")
            if not isinstance(named[name], nn.Linear) or _is_conv1d(named[name]):
                kind = type(named[name]).__module__ + "." + type(named[name]).__qualname__
                raise ValueError(f"kfac: {name!r} is a {kind}; only torch.nn.Linear is supported")
        for name, module in named.items():
            if modules is not None and name not in modules:
                continue
            if modules is None and _skipped(name, self.config.skip_modules):
                continue
            if _is_conv1d(module):
                raise ValueError(
                    f"kfac: {name!r} is a transformers.pytorch_utils.Conv1D (GPT-2); K-FAC supports only "
                    "torch.nn.Linear (use GPT-Neo / GPT-NeoX / Llama, or add it to skip_modules)"
                )
            if isinstance(module, nn.Linear):
                _check_layout(model, name, module)
                self.layers[name] = _Layer(module)
        if not self.layers:
            raise ValueError("kfac: the model has no nn.Linear layer to precondition")
        self._handles = [
            layer.module.register_forward_hook(self._forward_hook) for layer in self.layers.values()
        ]
        self._by_module = {id(layer.module): layer for layer in self.layers.values()}

    @property
    def collecting(self) -> bool:
        """Whether the current step's micro-batches are collected (a factor-update step)."""
        return self.steps % self.config.factor_update_steps == 0

    def _forward_hook(self, module: nn.Module, inputs, output) -> None:
        if not (module.training and torch.is_grad_enabled() and self.collecting and output.requires_grad):
            return
        layer, a = self._by_module[id(module)], inputs[0].detach()
        # The input is collected with the output gradient, so a forward without a backward counts nothing.
        output.register_hook(lambda g: layer.collect(a, g))

    def _reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(self.group) == 1:
            return tensors
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            by_dtype.setdefault(t.dtype, []).append(i)
        out = list(tensors)
        for idx in by_dtype.values():  # one all-reduce per dtype
            flat = torch.cat([tensors[i].reshape(-1) for i in idx])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            for i, part in zip(idx, flat.split([tensors[i].numel() for i in idx]), strict=True):
                out[i] = part.view_as(tensors[i])
        return out

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Once per optimizer step, after the last micro-batch's backward, before `optimizer.step()`."""
        cfg, layers = self.config, list(self.layers.values())
        if self.collecting:
            sums = self._reduce([t for layer in layers for t in layer.step_sums()])
            for i, layer in enumerate(layers):
                layer.update_factors(*sums[3 * i : 3 * i + 3], cfg.factor_decay)
        if self.steps % cfg.inv_update_steps == 0:
            for layer in layers:
                layer.update_inverse(getattr(torch, cfg.inv_dtype))
        pairs = []
        for layer in layers:
            grad = layer.grad()
            if grad is not None and layer.QA is not None:
                pairs.append((layer, grad, layer.precondition(grad, cfg.damping)))
        if pairs:
            nu = 1.0
            if cfg.kl_clip is not None:
                vg = (
                    float(torch.stack([(p.double() * g.double()).sum() for _, g, p in pairs]).sum()) * lr * lr
                )
                nu = 1.0 if vg == 0 else min(1.0, math.sqrt(cfg.kl_clip / abs(vg)))
            for layer, _, p in pairs:
                layer.set_grad(p * nu)
        self.steps += 1

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def state_dict(self) -> dict:
        """Plain tensors (for DCP): the step counter, and per layer its factors and eigendecompositions.

        Every entry is always present, with fixed shapes (zeros and ``present = 0`` before the first
        update), so a fresh KFAC's state_dict is the template DCP loads a checkpoint into.
        """
        state: dict = {"steps": torch.tensor(self.steps, dtype=torch.int64), "layers": {}}
        inv_dtype = getattr(torch, self.config.inv_dtype)
        for name, layer in self.layers.items():
            device = layer.module.weight.device
            entries = {}
            for k, (shape, dtype) in layer.state_shapes(inv_dtype).items():
                value = getattr(layer, k)
                unset = value is None
                entries[k] = torch.zeros(shape, dtype=dtype, device=device) if unset else value.clone()
            entries["present"] = torch.tensor([int(getattr(layer, k) is not None) for k in self._STATE])
            state["layers"][name] = entries
        return state

    def load_state_dict(self, state: dict) -> None:
        if set(state["layers"]) - set(self.layers):
            raise ValueError(
                f"kfac: state has unknown layers {sorted(set(state['layers']) - set(self.layers))}"
            )
        self.steps = int(state["steps"])
        for name, layer in self.layers.items():
            saved = state["layers"].get(name, {})
            present = saved.get("present", torch.tensor([int(k in saved) for k in self._STATE]))
            device = layer.module.weight.device
            for k, here in zip(self._STATE, present.tolist(), strict=True):
                setattr(layer, k, saved[k].clone().to(device) if here else None)
            layer.a_sum = layer.g_sum = None
            layer.rows = 0


def build_kfac(model: nn.Module, options: KFACOptions, output_layer: str) -> KFAC | None:
    """The trainer's K-FAC from `optimizer.kfac` (None when disabled): every nn.Linear but `output_layer`
    (embeddings are no nn.Linear), factors reduced over all ranks (the data-parallel ones: TP is refused)."""
    if not options.enabled:
        return None
    config = KFACConfig(
        factor_update_steps=options.factor_update_steps,
        inv_update_steps=options.inv_update_steps,
        factor_decay=options.factor_decay,
        damping=options.damping,
        kl_clip=options.kl_clip,
        skip_modules=(output_layer,),
    )
    return KFAC(model, config)
