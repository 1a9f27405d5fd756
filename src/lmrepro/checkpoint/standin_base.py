"""A stand-in base checkpoint (`bases.<name>.source: synthetic`): a seeded random Llama built by
`transformers` (`LlamaForCausalLM` from our `config.json`) and written in the base's format, so tiny twins
start from a base the way the seeds start from Llama-3.1-8B or Code Llama, with no download.

- `hf`: `save_pretrained` (config.json + model.safetensors), as a Hub Llama folder;
- `meta`: Meta's original layout, `params.json` + `consolidated.00.pth`, the same weights in Meta's names and
  interleaved RoPE layout (what Meta's `original/` folders and Code Llama's releases hold).

The architecture is known from the config alone (`standin_args`), so parse-time checks need no files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from lmrepro.checkpoint.hf import from_hf_state_dict, hf_config
from lmrepro.io import atomic_folder
from lmrepro.model.flavors import model_args, params_json
from lmrepro.model.llama import ModelArgs

STANDIN_FORMATS = ("hf", "meta")


def standin_args(spec: dict) -> ModelArgs:
    """The stand-in's architecture: `model.flavor` + `model.overrides`, vocabulary `model.vocab_size`."""
    model = spec["model"]
    return model_args(model.get("flavor", "debug"), model["vocab_size"], **model.get("overrides", {}))


def write_standin_base(spec: dict, out_dir: str | Path) -> Path:
    """Write the stand-in of a base's config entry into out_dir (atomically); same seed, same tensors."""
    import transformers

    if spec["format"] not in STANDIN_FORMATS:
        raise ValueError(
            f"format = {spec['format']!r}: a stand-in base is one of {', '.join(STANDIN_FORMATS)}"
        )
    args = standin_args(spec)
    config = transformers.LlamaConfig.from_dict(hf_config(args, bos_token_id=None, eos_token_id=None))
    torch.manual_seed(spec.get("seed", 0))
    model = transformers.LlamaForCausalLM(config).eval()
    with atomic_folder(out_dir) as tmp:
        if spec["format"] == "hf":
            model.save_pretrained(tmp)
        else:
            state = from_hf_state_dict({k: v.detach().clone() for k, v in model.state_dict().items()}, args)
            if args.tie_embeddings:
                state.pop("output.weight")
            torch.save(state, tmp / "consolidated.00.pth")
            (tmp / "params.json").write_text(json.dumps(params_json(args), indent=2) + "\n")
    return Path(out_dir)
