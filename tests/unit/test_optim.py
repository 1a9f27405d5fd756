"""Gradient clipping + optimizer step: the fused path (clipping handed to the optimizer's kernel as its
grad_scale) and the foreach path (a separate pass over the gradients) give the same update."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lmrepro.train.optim import clip_and_step


def _model_with_grads(seed: int, grad_size: float) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))
    for p in model.parameters():
        p.grad = torch.randn_like(p) * grad_size
    return model


@pytest.mark.parametrize("grad_size", [10.0, 1e-3])  # clipped / below the threshold
def test_fused_and_foreach_clip_the_same(grad_size: float) -> None:
    results = []
    for fused in (True, False):
        model = _model_with_grads(0, grad_size)
        expected_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
        kind = {"fused": True} if fused else {"foreach": True}
        opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1, **kind)
        norm = clip_and_step(opt, list(model.parameters()), max_norm=1.0)
        assert norm.dim() == 0 and not hasattr(opt, "grad_scale")  # a tensor: no host sync
        torch.testing.assert_close(norm, expected_norm)
        assert all(p.grad is None for p in model.parameters())
        results.append([p.detach().clone() for p in model.parameters()])
    for fused, foreach in zip(*results, strict=True):
        torch.testing.assert_close(fused, foreach, rtol=1e-6, atol=1e-7)


def test_clipping_changes_the_update_and_zero_disables_it() -> None:
    def step(max_norm: float) -> list[torch.Tensor]:
        model = _model_with_grads(1, 10.0)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)  # SGD: the update is the (clipped) gradient
        before = [p.detach().clone() for p in model.parameters()]
        grads = [p.grad.clone() for p in model.parameters()]
        norm = clip_and_step(opt, list(model.parameters()), max_norm)
        updates = [b - p.detach() for b, p in zip(before, model.parameters(), strict=True)]
        total = torch.nn.utils.get_total_norm(updates)
        scale = min(1.0, max_norm / (float(norm) + 1e-6)) if max_norm > 0 else 1.0
        for u, g in zip(updates, grads, strict=True):
            torch.testing.assert_close(u, g * scale)
        return total

    assert float(step(1.0)) == pytest.approx(1.0, rel=1e-4)
    assert float(step(0.0)) > 100  # no clipping: the raw norm (~10 × sqrt(#params))


def test_weight_decay_params_all_decays_norms_too():
    """optimizer.weight_decay_params: matrices exempts the 1-D norms (default); all decays every parameter
    (the torchtitan forks)."""
    from torch import nn

    from lmrepro.config import OptimizerConfig
    from lmrepro.train.optim import build_optimizer

    model = nn.Sequential(nn.Linear(4, 4, bias=True), nn.LayerNorm(4))
    default = build_optimizer(model, OptimizerConfig(weight_decay=0.1))
    assert [len(g["params"]) for g in default.param_groups] == [1, 3]  # weight | bias, norm weight, norm bias
    assert [g["weight_decay"] for g in default.param_groups] == [0.1, 0.0]
    every = build_optimizer(model, OptimizerConfig(weight_decay=0.1, weight_decay_params="all"))
    assert len(every.param_groups[0]["params"]) == 4 and every.param_groups[1]["params"] == []
