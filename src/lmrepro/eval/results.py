"""One evaluation JSON per (run, step, task), in one schema for every kind of task.

{"run", "step", "tokens_seen", "task", "kind": "loss" | "multiple_choice" | "lm_eval", "metrics": {...},
 "source": path evaluated, "provenance": {...}}
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lmrepro.checkpoint.dcp import load_model
from lmrepro.data.masking import HELDOUT_MASK_SEED, MaskingConfig
from lmrepro.data.shards import TokenStream
from lmrepro.eval.loss import heldout_loss, masked_heldout_loss, pseudo_perplexity, scored_windows
from lmrepro.eval.ngram import fit_ngram, ngram_windows_loss
from lmrepro.io import read_json, write_json
from lmrepro.model.losses import load_token_weights
from lmrepro.provenance import provenance

log = logging.getLogger(__name__)


EVAL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
EVAL_DEVICES = ("auto", "cpu", "cuda")


def add_numerics_arguments(parser) -> None:
    """The eval scripts' --device and --dtype (evals.<task>.device, evals.<task>.dtype)."""
    parser.add_argument(
        "--device",
        choices=EVAL_DEVICES,
        default="auto",
        help="evals.<task>.device (auto: the job's GPU if any)",
    )
    parser.add_argument("--dtype", choices=sorted(EVAL_DTYPES), default="float32", help="evals.<task>.dtype")


def write_result(out: str | Path, record: dict) -> None:
    write_json(out, record)


def eval_device(device: str) -> str:
    """evals.<task>.device: ``auto`` is the job's GPU when it has one, else the CPU."""
    if device not in EVAL_DEVICES:
        raise ValueError(f"eval device {device!r} is not valid; choose one of {list(EVAL_DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("evals.<task>.device = cuda, but this job sees no GPU (CUDA_VISIBLE_DEVICES?)")
    return device


def load_eval_model(checkpoint: str | Path, device: str, dtype: str):
    """(our model on ``device`` with its weights in ``dtype``, meta.json); logits are scored in float32.
    ``Module.bfloat16`` keeps the complex RoPE table (``Module.to(dtype)`` would cast it)."""
    if dtype not in EVAL_DTYPES:
        raise ValueError(f"eval dtype {dtype!r} is not valid; choose one of {sorted(EVAL_DTYPES)}")
    model, info = load_model(checkpoint, device=device)
    return (model.bfloat16() if dtype == "bfloat16" else model), info


def evaluate_loss_task(
    checkpoint: str | Path,
    shards: str | Path,
    task: str,
    max_tokens: int | None,
    out: str | Path,
    pseudo_perplexity_tokens: int = 0,
    token_weights: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> dict:
    """Held-out loss of a DCP checkpoint on the token shards of a folder (`shards`): next-token loss (with
    the run's `token_weights` file also its weighted loss, metrics `weighted_loss` beside `loss`, per
    token), or for a masked LM its masked-token loss and accuracy (and the most-frequent-token baseline)."""
    device = eval_device(device)
    model, info = load_eval_model(checkpoint, device, dtype)
    stream = TokenStream(shards)
    numerics = {"device": device, "dtype": dtype}
    if info.get("objective") == "mlm":
        return _masked_loss_task(
            model, info, stream, checkpoint, task, max_tokens, out, pseudo_perplexity_tokens, numerics
        )
    weights = load_token_weights(token_weights, model.args.vocab_size) if token_weights else None
    metrics = heldout_loss(
        model, stream, seq_len=info["seq_len"], max_tokens=max_tokens, token_weights=weights
    )
    log.info(
        "%s step %d: loss %.4f, perplexity %.2f", task, info["step"], metrics["loss"], metrics["perplexity"]
    )
    record = {
        "run": info.get("run"),
        "step": info["step"],
        "tokens_seen": info["tokens_seen"],
        "task": task,
        "kind": "loss",
        "metrics": {k: metrics[k] for k in ("loss", "perplexity", "weighted_loss") if k in metrics},
        **scored_counts(metrics, max_tokens),
        **numerics,
        "token_weights": str(token_weights) if token_weights else None,
        "source": str(checkpoint),
        "provenance": provenance(),
    }
    write_result(out, record)
    return record


def scored_counts(metrics: dict, max_tokens: int | None) -> dict:
    """What a loss eval scored: targets, windows, documents (None: no BOS in the shards), and the
    max_tokens asked for (None: the whole split)."""
    keys = ("num_tokens", "num_windows", "num_documents")
    return {**{k: metrics[k] for k in keys}, "max_tokens": max_tokens}


def _masked_loss_task(
    model, info: dict, stream: TokenStream, checkpoint, task: str, max_tokens, out, pppl_tokens, numerics
):
    masking = MaskingConfig(
        vocab_size=model.args.vocab_size,
        **{**info["mlm"], "never_mask_ids": tuple(info["mlm"]["never_mask_ids"])},
    )
    m = masked_heldout_loss(model, stream, seq_len=info["seq_len"], max_tokens=max_tokens, masking=masking)
    log.info(
        "%s step %d: masked-token loss %.4f, accuracy %.4f (most-frequent-token baseline %.4f)",
        task,
        info["step"],
        m["loss"],
        m["accuracy"],
        m["baseline_accuracy"],
    )
    pppl = _pseudo_perplexity(model, stream, info["seq_len"], masking, pppl_tokens)
    record = {
        "run": info.get("run"),
        "step": info["step"],
        "tokens_seen": info["tokens_seen"],
        "task": task,
        "kind": "loss",
        "objective": "mlm",
        "metrics": {k: m[k] for k in ("loss", "accuracy", "baseline_accuracy")} | pppl["metrics"],
        **pppl["counts"],
        **scored_counts(m, max_tokens),  # num_tokens: masked positions scored
        **numerics,
        "num_input_tokens": m["num_input_tokens"],
        "baseline_token_id": m["baseline_token_id"],
        "masking": {**info["mlm"], "seed": HELDOUT_MASK_SEED},
        "source": str(checkpoint),
        "provenance": provenance(),
    }
    write_result(out, record)
    return record


def _pseudo_perplexity(model, stream, seq_len: int, masking, num_tokens: int) -> dict:
    """{"metrics": {"pseudo_perplexity"}, "counts": {"pseudo_perplexity_tokens"}}, empty when not asked."""
    if num_tokens <= 0:
        return {"metrics": {}, "counts": {}}
    p = pseudo_perplexity(model, stream, seq_len=seq_len, num_tokens=num_tokens, masking=masking)
    log.info("pseudo-perplexity %.3f over %d tokens", p["pseudo_perplexity"], p["num_tokens"])
    return {
        "metrics": {"pseudo_perplexity": p["pseudo_perplexity"]},
        "counts": {"pseudo_perplexity_tokens": p["num_tokens"]},
    }


def evaluate_multiple_choice_task(
    export_dir: str | Path,
    jsonl: str | Path,
    task: str,
    out: str | Path,
    limit: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> dict:
    from lmrepro.eval.harness import evaluate_multiple_choice

    info = read_json(Path(export_dir) / "export.json")
    # The task YAML is kept next to the JSON so that record["lm_eval"]["command"] reruns it with the CLI.
    task_dir = Path(out).parent / f"{Path(out).stem}.lm_eval_task"
    if dtype not in EVAL_DTYPES:
        raise ValueError(f"eval dtype {dtype!r} is not valid; choose one of {sorted(EVAL_DTYPES)}")
    device = eval_device(device)
    result = evaluate_multiple_choice(
        Path(export_dir) / "hf", task, jsonl, limit=limit, task_dir=task_dir, device=device, dtype=dtype
    )
    log.info("%s step %d: %s", task, info["step"], result["metrics"])
    record = {
        "run": info.get("run"),
        "step": info["step"],
        "tokens_seen": info["tokens_seen"],
        "task": task,
        "kind": "multiple_choice",
        "metrics": result["metrics"],
        "num_examples": result["num_examples"],
        "device": device,
        "dtype": dtype,
        "lm_eval_version": result.get("lm_eval_version"),
        "lm_eval": result.get("lm_eval"),  # settings + the `lm_eval` command line that reproduces it
        "source": str(export_dir),
        "provenance": provenance(),
    }
    write_result(out, record)
    return record


def evaluate_lm_eval_task(
    export_dir: str | Path,
    task: str,
    lm_eval_task: str,
    out: str | Path,
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    max_gen_toks: int | None = None,
    device: str = "auto",
    dtype: str = "float32",
    task_manager=None,
) -> dict:
    """One of lm-eval's built-in tasks (or groups: mmlu, bbh, ...) on an export's ``hf/`` folder, offline
    from the local datasets cache (lmrepro.eval.lm_eval_tasks); the eval JSON holds the task's (or group's)
    metrics and, for a group, its subtasks' under ``subtasks``."""
    from lmrepro.eval.lm_eval_tasks import run_lm_eval_tasks

    info = read_json(Path(export_dir) / "export.json")
    if dtype not in EVAL_DTYPES:
        raise ValueError(f"eval dtype {dtype!r} is not valid; choose one of {sorted(EVAL_DTYPES)}")
    device = eval_device(device)
    results = run_lm_eval_tasks(
        Path(export_dir) / "hf",
        [lm_eval_task],
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        gen_kwargs={"max_gen_toks": max_gen_toks} if max_gen_toks else None,
        task_manager=task_manager,
    )
    main = next((r for r in results if r["task"] == lm_eval_task), results[0])
    log.info("%s (%s) step %d: %s", task, lm_eval_task, info["step"], main["metrics"])
    record = {
        "run": info.get("run"),
        "step": info["step"],
        "tokens_seen": info["tokens_seen"],
        "task": task,
        "kind": "lm_eval",
        "lm_eval_task": lm_eval_task,
        "metrics": main["metrics"],
        "num_examples": main["num_examples"],
        "subtasks": [
            {"task": r["task"], "metrics": r["metrics"], "num_examples": r["num_examples"]}
            for r in results
            if r is not main
        ],
        "device": device,
        "dtype": dtype,
        "lm_eval_version": main["lm_eval_version"],
        "lm_eval": main["lm_eval"],  # settings + the `lm_eval` command line that reproduces it
        "source": str(export_dir),
        "provenance": provenance(),
    }
    write_result(out, record)
    return record


def evaluate_ngram_task(
    run: str,
    train_shards: list[str | Path],
    shards: str | Path,
    task: str,
    *,
    n: int,
    max_tokens: int | None,
    seq_len: int,
    out: str | Path,
) -> dict:
    """The n-gram baseline of a run: fitted on its training shards, scored in nats per token on the same
    targets of `shards` that the run's loss eval scores (its windows of seq_len, spread evenly)."""
    streams = [TokenStream(folder) for folder in train_shards]
    vocab_size = max(s.vocab_size for s in streams)
    model = fit_ngram([np.asarray(s.window(0, len(s))) for s in streams], n, vocab_size)
    heldout = TokenStream(shards)
    starts = scored_windows(heldout, seq_len=seq_len, max_tokens=max_tokens)
    metrics = ngram_windows_loss(model, heldout, starts, seq_len)
    per_million = model.fit_seconds / max(model.num_tokens, 1) * 1e6
    log.info(
        "%s (%d-gram, %d training tokens, fit %.2f s = %.3f s per million tokens): %.4f nats/token on %d",
        task, n, model.num_tokens, model.fit_seconds, per_million, metrics["loss"], metrics["num_tokens"],
    )  # fmt: skip
    record = {
        "run": run,
        "task": task,
        "kind": "ngram",
        "n": n,
        "metrics": {"loss": metrics["loss"], "perplexity": metrics["perplexity"]},
        "num_tokens": metrics["num_tokens"],
        "num_windows": len(starts),
        "max_tokens": max_tokens,
        "train_tokens": model.num_tokens,
        "distinct_ngrams": int(len(model.gram_keys)),
        "fit_seconds": model.fit_seconds,
        "fit_seconds_per_million_tokens": per_million,
        "source": {"train": [str(f) for f in train_shards], "heldout": str(shards)},
        "provenance": provenance(),
    }
    write_result(out, record)
    return record
