"""Spike-train samples from an exported checkpoint (gpt-neuro's generate.py): conditional (prompted with the
first bins of a test row, continued) and unconditional (a few random neurons fire once at t = 0), decoded back
to (neurons x bins) count arrays and drawn as rasters next to the real continuation.

Sampling follows the token layout: every column (a time bin in byte mode, a time patch in patch mode) starts
with SEP, so SEP is placed where the layout puts it and the model samples the ids between (SEP and UNK are
masked there); the model's own probability of SEP at those places is recorded (how well it learned the
layout). The context is the last whole columns that fit the trained sequence length (no KV cache: a window
of seq_len tokens per step). Seeded: the same checkpoint, rows and seed give the same samples.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from lmrepro.data.sources import spike_rows_of, split_files
from lmrepro.data.spike_tokenizer import load_spike_tokenizer, split_rows
from lmrepro.data.spikes import new_row_stats
from lmrepro.io import write_json
from lmrepro.model.flavors import args_from_params_json
from lmrepro.model.llama import Transformer

log = logging.getLogger(__name__)


def load_exported_model(export_dir: str | Path) -> tuple[Transformer, dict]:
    """Our model from an export's consolidated.pth + params.json (and export.json: step, run)."""
    export_dir = Path(export_dir)
    args = args_from_params_json(json.loads((export_dir / "params.json").read_text()))
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    model.init_weights()  # the RoPE buffer; the weights come from the file
    state = torch.load(export_dir / "consolidated.pth", map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval(), json.loads((export_dir / "export.json").read_text())


@torch.no_grad()
def continue_columns(
    model: Transformer,
    prompt: np.ndarray,
    *,
    column_tokens: int,
    sep_id: int,
    banned: list[int],
    num_columns: int,
    context_tokens: int,
    generator: torch.Generator,
    temperature: float = 1.0,
) -> tuple[np.ndarray, float | None]:
    """`num_columns` more columns after `prompt` (whole columns): (new tokens, mean model P(SEP) at SEPs;
    None when no column was generated)."""
    tokens = list(int(t) for t in prompt)
    context_columns = max(context_tokens // column_tokens, 1)
    sep_probs = []
    for _ in range(num_columns * column_tokens):
        position = len(tokens) % column_tokens
        start = max(0, (len(tokens) // column_tokens - context_columns + 1) * column_tokens)
        window = torch.tensor(tokens[start:], dtype=torch.long)[None]
        logits = model(window)[0, -1].float() / temperature
        probs = torch.softmax(logits, -1)
        if position == 0:
            sep_probs.append(float(probs[sep_id]))
            tokens.append(sep_id)
            continue
        probs[banned] = 0
        tokens.append(int(torch.multinomial(probs / probs.sum(), 1, generator=generator)))
    new = np.asarray(tokens[len(prompt) :], dtype=np.int64)
    return new, float(np.mean(sep_probs)) if sep_probs else None


def sample_spikes(
    export_dir: str | Path,
    tokenizer_dir: str | Path,
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    num_rows: int = 3,
    prompt_bins: int = 20,
    gen_bins: int = 40,
    num_unconditional: int = 2,
    seq_len: int | None = None,
    seed: int = 0,
) -> dict:
    """samples.npz (prompt, real, generated arrays), samples.json and rasters.png in `out_dir`: `num_rows`
    test rows prompted with `prompt_bins` bins and continued for `gen_bins`, and `num_unconditional`
    samples of `gen_bins` bins."""
    model, info = load_exported_model(export_dir)
    tok = load_spike_tokenizer(tokenizer_dir)
    spec = spike_rows_of(raw_dir)
    if spec is None or spec.n_fixed is None:
        raise ValueError(f"{raw_dir}: samples need a spike dataset with n_fixed (a fixed number of neurons)")
    n = spec.n_fixed
    step_bins = tok.bins_per_column
    prompt_bins, gen_bins = -(-prompt_bins // step_bins) * step_bins, -(-gen_bins // step_bins) * step_bins
    column_tokens = tok.column_tokens(n)
    context_tokens = seq_len or model.args.max_seq_len
    banned = [tok.sep_id] + ([tok.unk_id] if tok.unk_id is not None else [])
    generator = torch.Generator().manual_seed(seed)
    files, _ = split_files(raw_dir, split)
    rows = [r for r in split_rows(files, spec, new_row_stats()) if r.shape[1] >= prompt_bins + gen_bins]
    if not rows:
        raise ValueError(
            f"{raw_dir}: no {split} row has {prompt_bins + gen_bins} bins for a prompt + continuation"
        )
    picked = rows[:num_rows]
    samples, arrays = [], {}
    for i, row in enumerate(picked):
        prompt_arr = row[:, :prompt_bins]
        prompt, _ = tok.encode_row(prompt_arr)
        new, sep_p = continue_columns(
            model, prompt, column_tokens=column_tokens, sep_id=tok.sep_id, banned=banned,
            num_columns=gen_bins // step_bins, context_tokens=context_tokens, generator=generator,
        )  # fmt: skip
        arrays[f"conditional_{i}_prompt"] = prompt_arr
        arrays[f"conditional_{i}_real"] = row[:, prompt_bins : prompt_bins + gen_bins]
        arrays[f"conditional_{i}_generated"] = tok.decode(new, n)[:, :gen_bins]
        samples.append({"kind": "conditional", "row": i, "model_p_sep": sep_p})
    rng = np.random.default_rng(seed)
    for j in range(num_unconditional):
        start = np.zeros((n, step_bins), dtype=np.uint8)
        start[rng.choice(n, size=max(1, n // 4), replace=False), 0] = 1  # random neurons fire once at t = 0
        prompt, _ = tok.encode_row(start)
        new, sep_p = continue_columns(
            model, prompt, column_tokens=column_tokens, sep_id=tok.sep_id, banned=banned,
            num_columns=gen_bins // step_bins - 1, context_tokens=context_tokens,
            generator=generator,
        )  # fmt: skip
        arrays[f"unconditional_{j}"] = np.concatenate([start, tok.decode(new, n)], axis=1)
        samples.append({"kind": "unconditional", "index": j, "model_p_sep": sep_p})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / "samples.npz", **arrays)
    record = {
        "run": info.get("run"),
        "step": info.get("step"),
        "export": str(export_dir),
        "tokenizer_mode": tok.mode,
        "n_neurons": n,
        "prompt_bins": prompt_bins,
        "gen_bins": gen_bins,
        "seed": seed,
        "samples": samples,
        "mean_count": {k: float(v.mean()) for k, v in arrays.items()},
    }
    write_json(out_dir / "samples.json", record)
    plot_rasters(arrays, record, out_dir / "rasters.png")
    log.info("samples of %s step %s → %s", record["run"], record["step"], out_dir)
    return record


def plot_rasters(arrays: dict[str, np.ndarray], record: dict, out: Path) -> Path:
    """One row per conditional sample (prompt | real continuation, prompt | generated) and the
    unconditional samples below; counts as grey levels, the prompt's end as a red line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conditional = sorted({k.split("_")[1] for k in arrays if k.startswith("conditional_")}, key=int)
    unconditional = sorted(k for k in arrays if k.startswith("unconditional_"))
    rows = len(conditional) + (1 if unconditional else 0)
    fig = Figure(figsize=(12, 2.4 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    vmax = max(1, max(int(np.percentile(v, 99)) for v in arrays.values()))
    mode, n = record["tokenizer_mode"], record["n_neurons"]
    fig.suptitle(f"{record['run']} step {record['step']} ({mode} tokens, {n} neurons)")
    for r, i in enumerate(conditional):
        prompt = arrays[f"conditional_{i}_prompt"]
        for c, (name, cont) in enumerate((("real", arrays[f"conditional_{i}_real"]),
                                           ("generated", arrays[f"conditional_{i}_generated"]))):  # fmt: skip
            ax = fig.add_subplot(rows, 2, 2 * r + c + 1)
            ax.imshow(np.concatenate([prompt, cont], 1), aspect="auto", cmap="Greys", vmin=0, vmax=vmax,
                      interpolation="nearest")  # fmt: skip
            ax.axvline(prompt.shape[1] - 0.5, color="red", lw=1)
            ax.set(title=f"test row {i}: prompt | {name} continuation", xlabel="time bin", ylabel="neuron")
    for c, key in enumerate(unconditional[:2]):
        ax = fig.add_subplot(rows, 2, 2 * len(conditional) + c + 1)
        ax.imshow(arrays[key], aspect="auto", cmap="Greys", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set(title=f"unconditional sample {c}", xlabel="time bin", ylabel="neuron")
    fig.savefig(out, dpi=110, metadata={"Software": None})
    return out
