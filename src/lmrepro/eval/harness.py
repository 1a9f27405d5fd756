"""Multiple-choice evaluation of an exported HF checkpoint with lm-evaluation-harness, fully offline.

The data is a local JSONL in HellaSwag's schema (``ctx``, ``endings``, ``label``; ``ind`` and
``activity_label`` may be present but are not used), so no hub dataset is ever needed.

BOS finding (lm-eval 0.4.13, transformers 5.23), verified by recording the ``input_ids`` that
``HFLM._model_call`` receives (tests/unit/test_harness.py, ``test_evaluate_feeds_bos_and_matches_...``):

* A byte-level BPE tokenizer saved by ``PreTrainedTokenizerFast`` has a ``ByteLevel`` post-processor and adds
  no BOS. lm-eval's default (``add_bos_token`` unset) then feeds ``ctx + ending`` without BOS, which is not
  what training saw (every training document starts with BOS).
* With ``add_bos_token=True`` lm-eval passes it to ``AutoTokenizer.from_pretrained`` (transformers 5 then
  rebuilds the post-processor to prepend BOS) and calls ``encode(..., add_special_tokens=True)``: every
  loglikelihood row is fed as ``[BOS] + ctx + ending[:-1]``. A tokenizer whose own ``TemplateProcessing``
  already adds BOS still gets exactly one BOS. ``add_bos_token=False`` strips even a template BOS.
* Because this depends on the tokenizer class and on transformers internals, ``evaluate_multiple_choice``
  re-checks it on the actual lm-eval model object before scoring and raises if BOS is missing, doubled or
  followed by an EOS (an EOS appended to the context would shift the context/continuation split).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Letters, digits, "_" and "-": the name becomes a YAML file name, a TaskManager key and the prefix of the
# report's "<task>/<metric>" columns, so no dots, slashes, commas or spaces.
_TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_REQUIRED_KEYS = ("ctx", "endings", "label")
_METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

log = logging.getLogger(__name__)


def _check_jsonl(jsonl_path: Path) -> None:
    if not jsonl_path.is_file():
        raise FileNotFoundError(f"multiple-choice data file not found: {jsonl_path}")
    with jsonl_path.open(encoding="utf-8") as f:
        first = f.readline()
    if not first.strip():
        raise ValueError(f"{jsonl_path}: first line is empty; expected one JSON object per line")
    try:
        row = json.loads(first)
    except json.JSONDecodeError as e:
        raise ValueError(f"{jsonl_path}: first line is not valid JSON: {e}") from e
    for key in _REQUIRED_KEYS:
        if key not in row:
            raise ValueError(
                f"{jsonl_path}: first row has no key {key!r} (needs {', '.join(_REQUIRED_KEYS)})"
            )
    endings, label = row["endings"], row["label"]
    if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) for e in endings)):
        raise ValueError(f"{jsonl_path}: key 'endings' must be a list of >= 2 strings, got {endings!r}")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise ValueError(f"{jsonl_path}: key 'label' must be an int index into 'endings', got {label!r}")


def write_multiple_choice_task(
    task_name: str,
    jsonl_path: str | Path,
    out_dir: str | Path,
    *,
    dataset_cache_dir: str | Path | None = None,
) -> Path:
    """Write ``<out_dir>/<task_name>.yaml``: lm-eval task over a HellaSwag-schema JSONL; returns the path."""
    if not isinstance(task_name, str) or not _TASK_NAME_RE.match(task_name):
        raise ValueError(f"task name {task_name!r} must match {_TASK_NAME_RE.pattern}")
    # Absolute: lm-eval/datasets resolve a relative data_files against the cwd, not the YAML's folder.
    jsonl_path = Path(jsonl_path).expanduser().resolve()
    _check_jsonl(jsonl_path)
    # A dict data_files makes a "test" split; a bare path would become a single "train" split.
    dataset_kwargs: dict[str, Any] = {"data_files": {"test": str(jsonl_path)}}
    if dataset_cache_dir is not None:
        dataset_kwargs["cache_dir"] = str(Path(dataset_cache_dir).resolve())
    config = {
        "task": task_name,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": dataset_kwargs,
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{ctx}}",
        "doc_to_choice": "{{endings}}",
        "doc_to_target": "{{label}}",
        # The endings already start with a space; the default delimiter " " would double it.
        "target_delimiter": "",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0},
    }
    out = Path(out_dir) / f"{task_name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return out


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Force hub offline mode, also for huggingface_hub/datasets already imported (env is read at import)."""
    saved_env = {k: os.environ.get(k) for k in _OFFLINE_VARS}
    os.environ.update(dict.fromkeys(_OFFLINE_VARS, "1"))
    import datasets.config
    import huggingface_hub.constants

    patched = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE")]
    patched += (
        [(datasets.config, "HF_DATASETS_OFFLINE")] if hasattr(datasets.config, "HF_DATASETS_OFFLINE") else []
    )
    saved_attrs = [(mod, name, getattr(mod, name)) for mod, name in patched]
    for mod, name in patched:
        setattr(mod, name, True)
    try:
        yield
    finally:
        for mod, name, value in saved_attrs:
            setattr(mod, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_bos(lm: Any, probe: str, add_bos_token: bool) -> None:
    """Fail loudly if lm-eval would not feed exactly ``[BOS] + tokens(probe)`` (or no BOS when disabled)."""
    tok = lm.tokenizer
    plain = list(tok.encode(probe, add_special_tokens=False))
    fed = list(lm.tok_encode(probe))
    expected = [tok.bos_token_id] + plain if add_bos_token else plain
    if add_bos_token and tok.bos_token_id is None:
        raise ValueError("add_bos_token=True but the checkpoint's tokenizer defines no bos_token")
    if fed != expected:
        raise RuntimeError(
            f"lm-eval tokenizes the context as {fed[:8]}... but {expected[:8]}... was expected "
            f"(add_bos_token={add_bos_token}, bos_token_id={tok.bos_token_id}, "
            f"eos_token_id={tok.eos_token_id})"
        )


def _as_float(value: Any) -> float | None:
    # lm-eval writes the string "N/A" for a stderr it cannot compute (e.g. a single example).
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def evaluate_multiple_choice(
    hf_model_dir: str | Path,
    task_name: str,
    jsonl_path: str | Path,
    *,
    batch_size: int = 16,
    limit: int | None = None,
    add_bos_token: bool = True,
    device: str = "cpu",
) -> dict[str, Any]:
    """Score ``hf_model_dir`` on a local multiple-choice JSONL with lm-eval; return a small JSON-able dict."""
    model_dir = Path(hf_model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"HF model directory has no config.json: {model_dir}")
    jsonl_path = Path(jsonl_path).expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="lmrepro-lmeval-") as tmp, _offline():
        # Validates name and data before the slow imports; the datasets Arrow cache goes to tmp, not ~/.cache.
        write_multiple_choice_task(task_name, jsonl_path, tmp, dataset_cache_dir=Path(tmp) / "datasets_cache")
        import lm_eval
        from lm_eval.api.registry import get_model
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import setup_logging

        # lm-eval's own INFO lines (model init, task, "Running loglikelihood requests" + tqdm) are the
        # progress; it only prints them once setup_logging is called. LMEVAL_LOG_LEVEL overrides the level.
        setup_logging(logging.INFO)
        model_args = f"pretrained={model_dir},dtype=float32,add_bos_token={add_bos_token}"
        # Built like simple_evaluate(model="hf", model_args=...) does, so that the BOS check below runs on
        # the very tokenizer object lm-eval will use.
        lm = get_model("hf").create_from_arg_string(model_args, {"batch_size": batch_size, "device": device})
        with jsonl_path.open(encoding="utf-8") as f:
            _check_bos(lm, json.loads(f.readline())["ctx"], add_bos_token)
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_name],
            # include_defaults=False skips indexing ~14k built-in task YAMLs (10-25 s on 2 cores).
            task_manager=TaskManager(include_path=tmp, include_defaults=False),
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=False,
        )
    if res is None or task_name not in res.get("results", {}):
        raise RuntimeError(f"lm-eval returned no results for task {task_name!r}")
    row = res["results"][task_name]
    metrics = {m: _as_float(row.get(f"{m},none")) for m in _METRICS}
    num_examples = int(res["n-samples"][task_name]["effective"])
    log.info(
        "%s on %s: acc=%s acc_norm=%s (n=%d)",
        task_name,
        model_dir,
        metrics["acc"],
        metrics["acc_norm"],
        num_examples,
    )
    return {
        "task": task_name,
        "kind": "multiple_choice",
        "metrics": metrics,
        "num_examples": num_examples,
        "lm_eval_version": str(res.get("lm_eval_version") or lm_eval.__version__),
    }
