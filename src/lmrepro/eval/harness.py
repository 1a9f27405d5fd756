"""Multiple-choice evaluation of an exported HF checkpoint with lm-evaluation-harness, fully offline.

The data is a local JSONL, so no hub dataset is ever needed. Two schemas, told apart by the first row:

* **HellaSwag** (rowanz / ``Rowan/hellaswag``: ``activity_label``, ``ctx_a``, ``ctx_b``, ``endings``,
  ``label``; ``ind``, ``ctx``, ``split``, ... ignored): the task YAML ``include``s lm-eval's own
  ``hellaswag/hellaswag.yaml``, so lm-eval's ``process_docs`` builds the prompt (``activity_label + ": " +
  ctx_a + " " + ctx_b.capitalize()``, ``[title]``/``[...]`` artefacts removed, endings stripped) and the
  default delimiter " " joins context and ending -- exactly the built-in ``hellaswag`` task on other data.
* **Other local sets** (``ctx``, ``endings``, ``label``): the rule is *one space between context and
  ending*. Each ending has one leading space removed if it has one, then one space put in front, and the
  delimiter is "". So ``" bread."`` and ``"bread."`` both score the continuation ``" bread."`` after
  ``ctx`` (what a " " delimiter with stripped endings would score), and acc_norm divides by the length of
  that continuation, space included -- byte for byte what lmrepro scored before this rule existed for
  endings that already started with a space (the synthetic sets), so their numbers are unchanged.

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
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Letters, digits, "_" and "-": the name becomes a YAML file name, a TaskManager key and the prefix of the
# report's "<task>/<metric>" columns, so no dots, slashes, commas or spaces.
_TASK_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]{0,63}$")
_REQUIRED_KEYS = ("ctx", "endings", "label")
# A first row with all of these is HellaSwag's own schema and gets lm-eval's HellaSwag preprocessing.
_HELLASWAG_KEYS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")
_METRICS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# Local sets: drop one leading space from each ending, put exactly one back (see the module docstring).
# Rendered by lm-eval's Jinja to a Python list literal, which lm-eval reads back with ast.literal_eval.
_ONE_SPACE_CHOICES = (
    "{% set ns = namespace(c=[]) %}{% for e in endings %}"
    "{% set ns.c = ns.c + [' ' ~ (e[1:] if e.startswith(' ') else e)] %}{% endfor %}{{ ns.c }}"
)

log = logging.getLogger(__name__)


def is_hellaswag_schema(row: dict[str, Any]) -> bool:
    return all(k in row for k in _HELLASWAG_KEYS)


def _check_jsonl(jsonl_path: Path) -> dict[str, Any]:
    """Validate the first row; return it."""
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
    if not isinstance(row, dict):
        raise ValueError(f"{jsonl_path}: first line is not a JSON object")
    hellaswag = is_hellaswag_schema(row)
    required = _HELLASWAG_KEYS if hellaswag else _REQUIRED_KEYS
    for key in required:
        if key not in row:
            raise ValueError(f"{jsonl_path}: first row has no key {key!r} (needs {', '.join(required)})")
    endings, label = row["endings"], row["label"]
    if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) for e in endings)):
        raise ValueError(f"{jsonl_path}: key 'endings' must be a list of >= 2 strings, got {endings!r}")
    # HellaSwag's label is an int in rowanz's JSONL and a digit string on the hub; lm-eval int()s it.
    if hellaswag and isinstance(label, str) and label.isdigit():
        label = int(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(endings):
        raise ValueError(
            f"{jsonl_path}: key 'label' must be an index into 'endings', got {row['label']!r}"
            + (" (HellaSwag's test split has no labels: use the validation split)" if label == "" else "")
        )
    return row


def lm_eval_tasks_dir() -> Path:
    """The installed lm_eval/tasks folder, found without importing lm_eval (slow)."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("lm_eval is not installed (pip install 'lm-eval[hf]')")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def multiple_choice_task_config(
    task_name: str, jsonl_path: str | Path, *, dataset_cache_dir: str | Path | None = None
) -> dict[str, Any]:
    """The lm-eval task config (a dict, as written to YAML) over a local multiple-choice JSONL."""
    if not isinstance(task_name, str) or not _TASK_NAME_RE.match(task_name):
        raise ValueError(f"task name {task_name!r} must match {_TASK_NAME_RE.pattern}")
    # Absolute: lm-eval/datasets resolve a relative data_files against the cwd, not the YAML's folder.
    jsonl_path = Path(jsonl_path).expanduser().resolve()
    row = _check_jsonl(jsonl_path)
    dataset_kwargs: dict[str, Any] = {}
    if dataset_cache_dir is not None:
        dataset_kwargs["cache_dir"] = str(Path(dataset_cache_dir).resolve())
    if is_hellaswag_schema(row):
        # lm-eval's own task: prompt, process_docs (a !function resolved in the included folder), the " "
        # delimiter, metrics and metadata.version all come from hellaswag.yaml; only the data is swapped.
        return {
            "include": str(lm_eval_tasks_dir() / "hellaswag" / "hellaswag.yaml"),
            "task": task_name,
            "tag": [],  # else the copy would re-register the built-in tag "multiple_choice"
            "dataset_path": "json",
            "dataset_name": None,
            # A dict data_files names the split; hellaswag.yaml scores "validation".
            "dataset_kwargs": {"data_files": {"validation": str(jsonl_path)}, **dataset_kwargs},
            "training_split": None,  # no train split locally; 0-shot needs none
        }
    return {
        "task": task_name,
        "dataset_path": "json",
        "dataset_name": None,
        # A dict data_files makes a "test" split; a bare path would become a single "train" split.
        "dataset_kwargs": {"data_files": {"test": str(jsonl_path)}, **dataset_kwargs},
        "output_type": "multiple_choice",
        "test_split": "test",
        "doc_to_text": "{{ctx}}",
        "doc_to_choice": _ONE_SPACE_CHOICES,
        "doc_to_target": "{{label}}",
        # The choices already start with exactly one space.
        "target_delimiter": "",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 2.0},  # 1.0: endings joined as given (no one-space rule)
    }


def write_multiple_choice_task(
    task_name: str,
    jsonl_path: str | Path,
    out_dir: str | Path,
    *,
    dataset_cache_dir: str | Path | None = None,
) -> Path:
    """Write ``<out_dir>/<task_name>.yaml`` (lm-eval task over a local multiple-choice JSONL); return it."""
    config = multiple_choice_task_config(task_name, jsonl_path, dataset_cache_dir=dataset_cache_dir)
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


def metrics_of(row: dict[str, Any]) -> dict[str, float | None]:
    """lm-eval's ``"<metric>,<filter>"`` keys as ``<metric>`` (filter "none") or ``<metric>,<filter>``."""
    out: dict[str, float | None] = {}
    for key, value in row.items():
        if "," not in key:
            continue  # "alias", "sample_len", ...
        metric, filt = key.split(",", 1)
        out[metric if filt == "none" else key] = _as_float(value)
    return out


def model_args_string(model_dir: Path, dtype: str, add_bos_token: bool) -> str:
    return f"pretrained={model_dir},dtype={dtype},add_bos_token={add_bos_token}"


def reproduction(
    res: dict[str, Any],
    task: str,
    *,
    model_args: str,
    add_bos_token: bool,
    dtype: str,
    device: str,
    batch_size: int,
    limit: int | float | None,
    num_fewshot: int | None,
    gen_kwargs: str | None = None,
    include_path: str | Path | None = None,
) -> dict[str, Any]:
    """What reproduces ``task``'s numbers in ``res`` (a simple_evaluate result): settings and the CLI line."""
    import lm_eval

    cfg = (res.get("configs") or {}).get(task)
    cfg_sha = (
        hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest() if cfg else None
    )
    cmd = ["python", "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args, "--tasks", task]
    cmd += ["--device", device, "--batch_size", str(batch_size)]  # the CLI's batch size defaults to 1
    if num_fewshot is not None:
        cmd += ["--num_fewshot", str(num_fewshot)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    if gen_kwargs:
        cmd += ["--gen_kwargs", gen_kwargs]
    if include_path is not None:
        cmd += ["--include_path", str(include_path)]
    n_shot = (res.get("n-shot") or {}).get(task)
    return {
        "lm_eval_version": str(res.get("lm_eval_version") or lm_eval.__version__),
        "task": task,
        "task_version": (res.get("versions") or {}).get(task),
        # sha256 of lm-eval's own dump of the task config (json, sorted keys); data paths included.
        "task_config_sha256": cfg_sha,
        "task_hash": (res.get("task_hashes") or {}).get(task),
        "num_fewshot": num_fewshot,  # as requested (None: the task's default) ...
        "n_shot": n_shot,  # ... and as lm-eval applied it
        "limit": limit,
        "add_bos_token": add_bos_token,
        "batch_size": batch_size,
        "dtype": dtype,
        "device": device,
        "gen_kwargs": gen_kwargs,
        "model_args": model_args,
        "command": " ".join(f"{v}=1" for v in _OFFLINE_VARS) + " " + shlex.join(cmd),
    }


def make_lm(model_args: str, batch_size: int, device: str, add_bos_token: bool) -> Any:
    """lm-eval's HFLM, built as ``simple_evaluate(model="hf", model_args=...)`` builds it, BOS-checked."""
    from lm_eval.api.registry import get_model
    from lm_eval.utils import setup_logging

    # lm-eval's own INFO lines (model init, task, "Running loglikelihood requests" + tqdm) are the
    # progress; it only prints them once setup_logging is called. LMEVAL_LOG_LEVEL overrides the level.
    setup_logging(logging.INFO)
    lm = get_model("hf").create_from_arg_string(model_args, {"batch_size": batch_size, "device": device})
    _check_bos(lm, "Question: the cat runs", add_bos_token)
    return lm


def evaluate_multiple_choice(
    hf_model_dir: str | Path,
    task_name: str,
    jsonl_path: str | Path,
    *,
    batch_size: int = 16,
    limit: int | None = None,
    add_bos_token: bool = True,
    device: str = "cpu",
    dtype: str = "float32",
    task_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``hf_model_dir`` on a local multiple-choice JSONL with lm-eval; return a small JSON-able dict.

    ``task_dir``: where the task YAML (and its datasets cache) is kept, so that ``result["lm_eval"]
    ["command"]`` can be run later; by default a temporary folder (the YAML is in ``["task_yaml"]``).
    """
    model_dir = Path(hf_model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"HF model directory has no config.json: {model_dir}")
    jsonl_path = Path(jsonl_path).expanduser().resolve()
    with contextlib.ExitStack() as stack:
        if task_dir is None:
            task_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="lmrepro-lmeval-"))
        task_dir = Path(task_dir).resolve()
        stack.enter_context(_offline())
        # Validates name and data before the slow imports; the datasets Arrow cache goes to task_dir.
        task_yaml = write_multiple_choice_task(
            task_name, jsonl_path, task_dir, dataset_cache_dir=task_dir / "datasets_cache"
        )
        import lm_eval
        from lm_eval.tasks import TaskManager

        model_args = model_args_string(model_dir, dtype, add_bos_token)
        # Built like simple_evaluate(model="hf", model_args=...) does, so that the BOS check runs on the
        # very tokenizer object lm-eval will use.
        lm = make_lm(model_args, batch_size, device, add_bos_token)
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task_name],
            # include_defaults=False skips indexing ~14k built-in task YAMLs (10-25 s on 2 cores).
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            batch_size=batch_size,
            device=device,
            limit=limit,
            log_samples=False,
        )
        yaml_text = task_yaml.read_text(encoding="utf-8")
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
    repro = reproduction(
        res,
        task_name,
        model_args=model_args,
        add_bos_token=add_bos_token,
        dtype=dtype,
        device=device,
        batch_size=batch_size,
        limit=limit,
        num_fewshot=None,
        include_path=task_dir,
    )
    repro["task_yaml"] = yaml_text
    repro["hellaswag_preprocessing"] = "include" in yaml.safe_load(yaml_text)
    return {
        "task": task_name,
        "kind": "multiple_choice",
        "metrics": metrics,
        "num_examples": num_examples,
        "lm_eval_version": repro["lm_eval_version"],
        "lm_eval": repro,
    }
