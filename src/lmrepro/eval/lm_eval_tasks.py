"""lm-eval's own built-in tasks (hellaswag, arc_easy, gsm8k, mmlu, ...) on an exported HF folder, offline.

The data comes from the local Hugging Face *datasets* Arrow cache (``$HF_DATASETS_CACHE``, by default
``$HF_HOME/datasets``), read with ``HF_DATASETS_OFFLINE=1``; the Hub is never contacted. Facts that shape
this module (../shared/reference/lm-eval-offline.md, lm-eval 0.4.13, datasets 5.2):

* offline, ``datasets.load_dataset("allenai/ai2_arc", "ARC-Easy")`` reads only the Arrow cache
  ``<HF_DATASETS_CACHE>/allenai___ai2_arc/ARC-Easy/0.0.0/<hash>/``; a Hub snapshot (``hf download``) or a
  ``save_to_disk`` folder is not found. The cache is filled by running the same ``load_dataset`` once with
  network access and the same ``HF_HOME`` -- :func:`cache_command` prints the command for a task.
* lm-eval loads every split the task names, the few-shot ``train`` split included even at 0-shot.

:func:`run_lm_eval_tasks` resolves the names with lm-eval's ``TaskManager`` (the default index of the
installed lm-eval's task YAMLs, ~15 s to build on 2 cores; pass one ``task_manager`` to reuse it), loads
every task's data before the model is built (an uncached dataset is a ``ValueError`` naming it and the
command that caches it), and scores with ``lm_eval.simple_evaluate`` -- the same code path as the
``lm_eval`` CLI, whose exact command line each result records under ``["lm_eval"]["command"]``.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lmrepro.eval.harness import _offline, make_lm, metrics_of, model_args_string, reproduction

log = logging.getLogger(__name__)

# What datasets 5.2 raises offline: nothing cached for the dataset / only other configs cached.
_UNREACHABLE_RE = re.compile(
    r"Couldn't reach '(?P<a>[^']+)'|Dataset '(?P<b>[^']+)' doesn't exist"
    r"|Couldn't find cache for (?P<c>\S+) for config '(?P<cfg>[^']+)'"
)


def gen_kwargs_string(gen_kwargs: str | Mapping[str, Any] | None) -> str | None:
    """``{"max_gen_toks": 8}`` -> ``"max_gen_toks=8"``: the CLI's ``--gen_kwargs`` form, used for both."""
    if gen_kwargs is None or isinstance(gen_kwargs, str):
        return gen_kwargs or None
    return ",".join(f"{k}={v}" for k, v in gen_kwargs.items()) or None


def cache_command(task: str) -> str:
    """Shell command that fills the local datasets cache with everything ``task`` loads (needs network)."""
    return (
        'HF_HOME="${HF_HOME:-$HOME/.cache/huggingface}" python -c "from lm_eval.tasks import TaskManager; '
        f"TaskManager().load_task_or_group(['{task}'])\""
    )


def _task_manager(task_manager: Any | None) -> Any:
    if task_manager is not None:
        return task_manager
    from lm_eval.tasks import TaskManager

    return TaskManager()  # the installed lm-eval's own task definitions, as the CLI uses them


def check_task_names(tasks: Sequence[str], task_manager: Any) -> None:
    """Raise ValueError for names lm-eval does not know, with close matches."""
    if isinstance(tasks, str) or not tasks or not all(isinstance(t, str) and t for t in tasks):
        raise ValueError(f"tasks must be a non-empty list of task names, got {tasks!r}")
    known = task_manager.all_tasks
    unknown = [t for t in tasks if t not in known]
    if unknown:
        close = {t: difflib.get_close_matches(t, known, n=5, cutoff=0.6) for t in unknown}
        hints = "; ".join(f"{t!r}: did you mean {', '.join(c) or '(none)'}?" for t, c in close.items())
        raise ValueError(
            f"unknown lm-eval task(s) {unknown} ({hints}); `python -m lm_eval ls tasks` lists all "
            f"{len(known)} names of the installed lm-eval"
        )


def _dataset_of(exc: BaseException) -> str | None:
    for e in (exc, exc.__cause__, exc.__context__):
        m = _UNREACHABLE_RE.search(str(e)) if e is not None else None
        if m:
            name = m.group("a") or m.group("b") or m.group("c")
            return f"{name!r} (config {m.group('cfg')!r})" if m.group("cfg") else repr(name)
    return None


def check_tasks_cached(tasks: Sequence[str], task_manager: Any) -> None:
    """Load each task's data offline (cheap from the Arrow cache); raise ValueError for what is missing."""
    import datasets

    missing: list[str] = []
    for task in tasks:
        try:
            task_manager.load_task_or_group([task])
        except Exception as e:  # ConnectionError, DatasetNotFoundError, ValueError (config not cached), ...
            dataset = _dataset_of(e)
            missing.append(
                f"task {task!r} needs dataset {dataset or '(see below)'}, which is not in the offline "
                f"datasets cache {datasets.config.HF_DATASETS_CACHE}; cache it once with network "
                f"access and the same HF_HOME: {cache_command(task)}  [{type(e).__name__}: {e}]"
            )
    if missing:
        raise ValueError("\n".join(missing))


def run_lm_eval_tasks(
    hf_model_dir: str | Path,
    tasks: Sequence[str],
    *,
    num_fewshot: int | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    add_bos_token: bool = True,
    gen_kwargs: str | Mapping[str, Any] | None = None,
    task_manager: Any | None = None,
) -> list[dict[str, Any]]:
    """Score ``hf_model_dir`` on lm-eval's built-in ``tasks``; one result dict per task, group and subtask.

    Each result: ``{"task", "kind": "lm_eval", "metrics": {"acc": .., "exact_match,strict-match": ..},
    "num_examples", "lm_eval_version", "lm_eval": {settings + "command"}}``. ``num_fewshot=None`` keeps each
    task's own default (gsm8k: 5); ``gen_kwargs`` (e.g. ``{"max_gen_toks": 16}``) overrides generative
    tasks' generation settings, whose stop sequences otherwise come from the task YAML.
    """
    model_dir = Path(hf_model_dir).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"HF model directory has no config.json: {model_dir}")
    tasks = list(tasks) if not isinstance(tasks, str) else tasks
    gen = gen_kwargs_string(gen_kwargs)
    with _offline():
        tm = _task_manager(task_manager)
        check_task_names(tasks, tm)
        check_tasks_cached(tasks, tm)  # before the model is loaded and anything is scored
        import lm_eval

        model_args = model_args_string(model_dir, dtype, add_bos_token)
        lm = make_lm(model_args, batch_size, device, add_bos_token)
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            device=device,
            limit=limit,
            gen_kwargs=gen,
            task_manager=tm,
            log_samples=False,
        )
    if res is None or not res.get("results"):
        raise RuntimeError(f"lm-eval returned no results for tasks {tasks}")
    out = []
    for task, row in res["results"].items():
        n = (res.get("n-samples") or {}).get(task, {})
        repro = reproduction(
            res,
            task,
            model_args=model_args,
            add_bos_token=add_bos_token,
            dtype=dtype,
            device=device,
            batch_size=batch_size,
            limit=limit,
            num_fewshot=num_fewshot,
            gen_kwargs=gen,
        )
        out.append(
            {
                "task": task,
                "kind": "lm_eval",
                "metrics": metrics_of(row),
                "num_examples": int(n["effective"]) if "effective" in n else None,
                "lm_eval_version": repro["lm_eval_version"],
                "lm_eval": repro,
            }
        )
        log.info("%s on %s: %s", task, model_dir, out[-1]["metrics"])
    return out
