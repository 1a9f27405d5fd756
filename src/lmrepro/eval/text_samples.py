"""Text samples of a causal run's exports: the same fixed prompts continued greedily and by seeded sampling at
every exported step, read through ``transformers`` from the export's ``hf/`` folder (as any user of the export
would), so the report shows what the model writes as training goes on."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from lmrepro.io import write_json

log = logging.getLogger(__name__)


@torch.no_grad()
def continuations(
    hf_dir: str | Path,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
) -> list[dict]:
    """{prompt, greedy, sampled} per prompt: the new text only (prompt and special tokens stripped). Sampling
    starts from torch's global generator seeded by (seed, prompt index), so a rerun gives the same text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    eos = tokenizer.eos_token_id
    limit = getattr(model.config, "max_position_embeddings", None)
    rows = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # BOS from the tokenizer's post-processor
        new_tokens = max_new_tokens if limit is None else max(min(max_new_tokens, limit - ids.shape[1]), 0)
        common = {"max_new_tokens": new_tokens, "pad_token_id": eos if eos is not None else 0}
        common["attention_mask"] = torch.ones_like(ids)
        greedy = model.generate(ids, do_sample=False, **common)
        torch.manual_seed(seed * 1_000_003 + i)
        sampled = model.generate(ids, do_sample=True, temperature=temperature, top_k=top_k, **common)
        rows.append(
            {
                "prompt": prompt,
                "greedy": tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True),
                "sampled": tokenizer.decode(sampled[0, ids.shape[1] :], skip_special_tokens=True),
            }
        )
    return rows


def write_text_samples(
    exports: Sequence[str | Path],
    out: str | Path,
    *,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
) -> dict:
    """One JSON for a run: its samples at each export (step order) and the settings that made them."""
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "seed": seed}
    steps = []
    for export in map(Path, exports):
        info = json.loads((export / "export.json").read_text())
        if not (export / "hf" / "config.json").is_file():
            raise FileNotFoundError(f"{export}: no hf/ folder; text samples need a causal model's export")
        rows = continuations(export / "hf", prompts, **settings)
        steps.append({"step": info["step"], "tokens_seen": info.get("tokens_seen"), "samples": rows})
        log.info("step %s: %s", info["step"], rows[0]["greedy"][:80] if rows else "")
    runs = {json.loads((Path(e) / "export.json").read_text()).get("run") for e in exports}
    doc = {"run": runs.pop() if len(runs) == 1 else None, "settings": settings, "prompts": list(prompts)}
    doc["steps"] = sorted(steps, key=lambda s: s["step"])
    write_json(Path(out), doc)
    return doc
