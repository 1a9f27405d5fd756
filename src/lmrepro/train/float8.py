"""float8 training (torchao) applied from outside the model, as torchtitan's Float8Converter does.

``apply_float8(model, recipe, device)`` swaps every ``nn.Linear`` except the output layer (and any whose
dimensions are not multiples of 16, which the float8 GEMMs cannot take) for torchao's ``Float8Linear``
with the named recipe: ``tensorwise`` (one scale per tensor) or ``rowwise`` (one scale per row, the
more accurate one). Call it on the meta-device model before compile and FSDP. Parameter names and the
state dict are unchanged, so checkpoints load either way. ``off`` leaves the model alone.

torchao is imported only here, lazily, so the package imports without it (it is absent on CPU machines).
"""

from __future__ import annotations

import torch
from torch import nn

RECIPES = ("off", "tensorwise", "rowwise")


def check_float8(recipe: str, device: torch.device | str, key: str = "training.float8") -> None:
    """Refuse a float8 recipe that cannot run here with a one-line ValueError naming ``key``."""
    if recipe not in RECIPES:
        raise ValueError(f"{key} = {recipe!r}: expected one of {', '.join(RECIPES)}")
    if recipe == "off":
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(
            f"{key} = {recipe!r} needs a CUDA GPU (float8 matmuls); this run is on {device.type}"
        )
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise ValueError(
            f"{key} = {recipe!r} needs compute capability >= 8.9 (Ada/Hopper); this GPU is {major}.{minor}"
        )
    try:
        import torchao.float8  # noqa: F401
    except ImportError as e:
        raise ValueError(f"{key} = {recipe!r} needs torchao (pip install torchao): {e}") from None


def float8_filter(module: nn.Module, fqn: str) -> bool:
    """Which Linear layers become Float8Linear: all but the output layer and odd-sized ones."""
    if not isinstance(module, nn.Linear):
        return False
    if fqn == "output" or fqn.endswith(".output"):
        return False
    return module.in_features % 16 == 0 and module.out_features % 16 == 0


def apply_float8(model: nn.Module, recipe: str, device: torch.device | str) -> int:
    """Convert ``model``'s Linear layers in place; returns how many were converted (0 for ``off``)."""
    check_float8(recipe, device)
    if recipe == "off":
        return 0
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)
    convert_to_float8_training(model, config=config, module_filter_fn=float8_filter)
    from torchao.float8.float8_linear import Float8Linear

    return sum(isinstance(m, Float8Linear) for m in model.modules())
