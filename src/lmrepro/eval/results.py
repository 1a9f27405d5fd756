"""One evaluation JSON per (run, step, task), in one schema for every kind of task.

{"run", "step", "tokens_seen", "task", "kind": "loss" | "multiple_choice", "metrics": {...},
 "source": path evaluated, "provenance": {...}}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lmrepro.checkpoint.export import load_model
from lmrepro.data.shards import TokenStream
from lmrepro.eval.loss import heldout_loss
from lmrepro.provenance import provenance

log = logging.getLogger(__name__)


def write_result(out: str | Path, record: dict) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, out)


def evaluate_loss_task(
    checkpoint: str | Path, index: str | Path, task: str, max_tokens: int, out: str | Path
) -> dict:
    model, meta = load_model(checkpoint)
    stream = TokenStream(index)
    metrics = heldout_loss(model, stream, seq_len=meta["seq_len"], max_tokens=max_tokens)
    log.info(
        "%s step %d: loss %.4f, perplexity %.2f", task, meta["step"], metrics["loss"], metrics["perplexity"]
    )
    record = {
        "run": meta.get("run"),
        "step": meta["step"],
        "tokens_seen": meta["tokens_seen"],
        "task": task,
        "kind": "loss",
        "metrics": {"loss": metrics["loss"], "perplexity": metrics["perplexity"]},
        "num_tokens": metrics["num_tokens"],
        "source": str(checkpoint),
        "provenance": provenance(),
    }
    write_result(out, record)
    return record


def evaluate_multiple_choice_task(
    export_dir: str | Path, jsonl: str | Path, task: str, out: str | Path, limit: int | None = None
) -> dict:
    from lmrepro.eval.harness import evaluate_multiple_choice

    info = json.loads((Path(export_dir) / "export.json").read_text())
    result = evaluate_multiple_choice(Path(export_dir) / "hf", task, jsonl, limit=limit)
    log.info("%s step %d: %s", task, info["step"], result["metrics"])
    record = {
        "run": info.get("run"),
        "step": info["step"],
        "tokens_seen": info["tokens_seen"],
        "task": task,
        "kind": "multiple_choice",
        "metrics": result["metrics"],
        "num_examples": result["num_examples"],
        "lm_eval_version": result.get("lm_eval_version"),
        "source": str(export_dir),
        "provenance": provenance(),
    }
    write_result(out, record)
    return record
