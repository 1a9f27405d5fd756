"""The one route from a run's model description to a model: our Llama (`ModelArgs`) or a transformers
causal LM (`HFCausalArgs`, model/hf_causal.py). Trainer, checkpoints, export and evaluation go through
these functions, so neither backend needs branches of its own elsewhere."""

from __future__ import annotations

from typing import Any

from torch import nn

from lmrepro.model.flavors import args_from_params_json, params_json
from lmrepro.model.hf_causal import HFCausalArgs, HFCausalLM, hf_flops_per_token
from lmrepro.model.llama import ModelArgs, Transformer, flops_per_token

ModelSpec = ModelArgs | HFCausalArgs
HF_CONFIG = "hf_config"  # meta.json key of a transformers model's config (a Llama's is "model_args")


def build_model(args: ModelSpec) -> nn.Module:
    """The model on the current default device (``with torch.device("meta")`` for deferred init)."""
    return HFCausalLM(args) if isinstance(args, HFCausalArgs) else Transformer(args)


def model_info(args: ModelSpec) -> dict[str, Any]:
    """What a checkpoint's meta.json records of the model (read back by :func:`args_from_info`)."""
    if isinstance(args, HFCausalArgs):
        return {HF_CONFIG: args.config}
    return {"model_args": params_json(args)}


def args_from_info(info: dict[str, Any]) -> ModelSpec:
    if HF_CONFIG in info:
        return HFCausalArgs(info[HF_CONFIG])
    return args_from_params_json(info["model_args"])


def has_model_info(info: dict[str, Any]) -> bool:
    return HF_CONFIG in info or "model_args" in info


def model_flops_per_token(model: nn.Module, seq_len: int) -> int:
    if isinstance(model, HFCausalLM):
        return hf_flops_per_token(model, seq_len)
    return flops_per_token(model.args, seq_len)


def output_layer_name(model: nn.Module) -> str:
    """The output projection's module name (K-FAC leaves it, like the embeddings, unpreconditioned)."""
    return model.output_layer_name if isinstance(model, HFCausalLM) else "output"


def model_state_shapes(args: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Key → shape of every tensor a checkpoint of this model stores (from a meta-device build)."""
    import torch

    with torch.device("meta"):
        model = build_model(args)
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}
