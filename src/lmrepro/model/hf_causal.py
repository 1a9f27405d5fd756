"""Any Hugging Face `transformers` causal LM as the model, shaped like our Llama for the trainer.

llm-pytorch (the seed) trains `AutoModelForCausalLM` models (GPT-Neo, GPT-NeoX). Here a run names one by a
local config folder (`model.hf.config`, what `PretrainedConfig.save_pretrained` writes) or by a model type
and its values (`model.hf.model_type` + `model.hf.config_values`), never a Hub download. The vocabulary
size is the run's tokenizer's. :class:`HFCausalLM` gives the trainer what it uses of
:class:`lmrepro.model.llama.Transformer`:

- built under ``torch.device("meta")`` by ``AutoModelForCausalLM.from_config`` (fp32 master weights), then
  ``to_empty`` + :meth:`init_weights`: transformers' own ``_init_weights`` from torch's RNG state, which
  also recomputes the non-persistent buffers (causal masks, RoPE tables) and re-ties the embeddings;
- ``forward(tokens)`` → logits, ``forward(tokens, targets)`` → mean next-token cross-entropy, the loss
  transformers computes for ``labels`` = the whole window (``tests/unit/test_hf_causal.py``);
- ``layers``: the container of the decoder blocks (the classes in ``_no_split_modules``), which FSDP2,
  activation checkpointing and compile wrap one by one;
- state-dict keys are transformers' own (``transformer.h.0.attn...``): the wrapper registers the model's
  children as its own, so a checkpoint exports with ``save_pretrained`` and nothing renamed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class HFCausalArgs:
    """The complete transformers config of a run's model (``PretrainedConfig.to_dict()``)."""

    config: dict[str, Any]

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def model_type(self) -> str:
        return str(self.config["model_type"])

    @property
    def max_seq_len(self) -> int | None:
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if isinstance(self.config.get(key), int):
                return self.config[key]
        return None

    def transformers_config(self):
        from transformers import AutoConfig

        values = {k: v for k, v in self.config.items() if k != "model_type"}
        return AutoConfig.for_model(self.model_type, **values)


def causal_model_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def hf_causal_args(
    config: str, model_type: str, config_values: dict[str, Any], vocab_size: int, root: str | Path = "."
) -> HFCausalArgs:
    """The run's transformers config from `model.hf` (folder or model type, then config_values), with the
    tokenizer's vocabulary; ValueError / FileNotFoundError naming the key for what cannot be trained."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config:
        folder = Path(root) / config
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"model.hf.config = {config}: no {CONFIG_FILE} there (a folder written by "
                "PretrainedConfig.save_pretrained)"
            )
        try:
            base = AutoConfig.from_pretrained(str(folder), local_files_only=True).to_dict()
        except (ValueError, KeyError, OSError) as e:
            raise ValueError(f"model.hf.config = {config}: transformers cannot read it: {e}") from None
        where, name = "model.hf.config", base["model_type"]
    else:
        if model_type not in CONFIG_MAPPING_NAMES:
            raise ValueError(
                f"model.hf.model_type = {model_type!r} is not a transformers model type; causal LMs: "
                f"{', '.join(causal_model_types())}"
            )
        base, where, name = {}, "model.hf.model_type", model_type
    if name not in causal_model_types():
        raise ValueError(
            f"{where}: model type {name!r} has no causal LM in transformers (AutoModelForCausalLM); "
            f"valid: {', '.join(causal_model_types())}"
        )
    known = AutoConfig.for_model(name)
    for key in config_values:
        if key not in known.to_dict() and not hasattr(known, key):
            raise ValueError(f"model.hf.config_values.{key}: {type(known).__name__} has no attribute {key!r}")
    # Built again from all values, so that derived attributes (GPT-Neo's attention_layers) follow them.
    values = {k: v for k, v in {**base, **config_values}.items() if k != "model_type"}
    if vocab_size > 0:
        values["vocab_size"] = vocab_size
    try:
        cfg = AutoConfig.for_model(name, **values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where} with model.hf.config_values: {e}") from None
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):  # e.g. GPT-Neo's 50256 in a small vocab:
        token = getattr(cfg, key, None)  # the export sets them from the run's tokenizer
        if isinstance(token, int) and not 0 <= token < cfg.vocab_size:
            setattr(cfg, key, None)
    if getattr(cfg, "is_encoder_decoder", False):
        raise ValueError(f"{where}: {name} is an encoder-decoder model; a causal LM is needed")
    return HFCausalArgs(cfg.to_dict())


def _block_container(model: nn.Module) -> nn.Module:
    """The module whose children are the decoder blocks: the parent of the `_no_split_modules` classes."""
    block_classes = set(getattr(model, "_no_split_modules", None) or [])
    parents = {}
    for name, module in model.named_modules():
        if type(module).__name__ in block_classes and name:
            parents.setdefault(name.rpartition(".")[0], []).append(module)
    if len(parents) != 1:
        raise ValueError(
            f"{type(model).__name__}: cannot find one container of its decoder blocks "
            f"(_no_split_modules = {sorted(block_classes)}; found under {sorted(parents) or 'none'})"
        )
    parent_name = next(iter(parents))
    return model.get_submodule(parent_name)


class HFCausalLM(nn.Module):
    """A transformers causal LM with the interface of our Transformer (see the module docstring)."""

    def __init__(self, args: HFCausalArgs):
        super().__init__()
        from transformers import AutoModelForCausalLM

        if args.vocab_size <= 0:
            raise ValueError(f"the model's vocab_size must be set from the tokenizer, got {args.vocab_size}")
        self.args = args
        hf = AutoModelForCausalLM.from_config(args.transformers_config(), dtype=torch.float32)
        # Not a submodule (its children are ours below), so state-dict keys are transformers' own.
        object.__setattr__(self, "hf", hf)
        for name, child in hf.named_children():
            self.add_module(name, child)
        if any(True for _ in hf.named_parameters(recurse=False)):
            raise ValueError(f"{type(hf).__name__} has parameters of its own; not supported")
        object.__setattr__(self, "_layers", _block_container(hf))  # a view, not a second registration

    @property
    def layers(self) -> nn.Module:
        """The decoder blocks' container (an nn.ModuleList): parallel.py wraps its children in place."""
        return self._layers

    @property
    def output_layer_name(self) -> str:
        """The name of the output projection (lm_head, embed_out, …), which K-FAC leaves alone."""
        output = self.hf.get_output_embeddings()
        return next(name for name, module in self.named_modules() if module is output)

    @torch.no_grad()
    def init_weights(self) -> None:
        """transformers' initialisation from torch's RNG state, after ``to_empty``: every parameter, the
        non-persistent buffers (masks, RoPE) and the embedding tie."""
        for module in self.hf.modules():
            module.__dict__.pop("_is_hf_initialized", None)
        self.hf.initialize_weights()
        self.hf.tie_weights()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [b, s] → logits [b, s, vocab]; with targets [b, s] the mean next-token cross-entropy."""
        logits = self.hf(input_ids=tokens, use_cache=False).logits  # [b, s, vocab]
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameter count; ``exclude_embeddings`` drops the token (and learned position) tables."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            tables = {id(m.weight): m.weight.numel() for m in self.modules() if isinstance(m, nn.Embedding)}
            n -= sum(tables.values())
        return n

    def save_pretrained(self, out_dir: str | Path, **kwargs) -> None:
        self.hf.save_pretrained(str(out_dir), **kwargs)


def hf_flops_per_token(model: HFCausalLM, seq_len: int) -> int:
    """6 × the parameters in matmuls (all but embedding tables, the output layer counted even when tied)
    + 12 × layers × hidden × seq_len for attention (the PaLM formula our Llama uses)."""
    cfg = model.args.config
    hidden = cfg.get("hidden_size") or cfg.get("n_embd") or 0
    layers = cfg.get("num_hidden_layers") or cfg.get("num_layers") or cfg.get("n_layer") or 0
    matmul = model.num_params(exclude_embeddings=True)
    output = model.hf.get_output_embeddings()
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    if output is not None and any(output.weight is t for t in tables):
        matmul += output.weight.numel()
    return 6 * matmul + 12 * layers * hidden * seq_len
