"""Load training metrics and evaluation JSONs into DataFrames, and build the per-checkpoint summary table.

Inputs (formats fixed by the trainer and lmrepro.eval.results):

* training metrics: JSONL, one row per logged step (``step`` required, every other key optional). A run may
  have several files, one per training segment; they are read in the order given and, for a step logged
  more than once (a segment re-run after a crash), the LAST row wins.
* evaluations: one JSON per (run, step, task): ``{"run", "step", "tokens_seen", "task", "kind", "metrics"}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

METRIC_COLUMNS = (
    "step",
    "tokens_seen",
    "loss",
    "weighted_loss",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "tokens_per_s_per_device",
    "tflops_per_device",
    "mfu",
    "peak_memory_gib",
    "data_wait_s",
    "val_loss",
    "val_tokens",
)
# The realised token share of each mixture source, one column per source (data/prefetch.py's metrics()).
MIXTURE_PREFIX = "mixture/"
EVAL_COLUMNS = ("run", "step", "tokens_seen", "task", "kind", "metric", "value")
_EVAL_REQUIRED = ("run", "step", "task", "kind", "metrics")
# Runs given as a bare list of files (no mapping) are labelled with this name.
DEFAULT_RUN = "default"


def _number(value: Any) -> float:
    # null, strings such as lm-eval's "N/A", and booleans all become NaN: a plot gap, an empty CSV cell.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f"training metrics file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                # A half-written last line (killed job) would otherwise hide every row before it.
                raise ValueError(f"{path}:{line_number}: not valid JSON: {e}") from e
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError(f"{path}:{line_number}: row has no 'step' key")
            rows.append(row)
    return rows


def load_metrics(metrics: Mapping[str, Iterable[str | Path]] | Iterable[str | Path]) -> pd.DataFrame:
    """Training metrics of every run: columns ``run`` + METRIC_COLUMNS, one row per (run, step), sorted.

    ``metrics`` maps a run name to its metrics files in segment order; a bare iterable of files is one run
    named DEFAULT_RUN. Keys a row does not have are NaN; a mixture's ``mixture/<source>`` shares are kept as
    columns after METRIC_COLUMNS (sorted); other keys are dropped.
    """
    by_run = dict(metrics) if isinstance(metrics, Mapping) else {DEFAULT_RUN: metrics}
    records = []
    shares: set[str] = set()
    for run, paths in by_run.items():
        for path in paths:
            for row in _read_jsonl(Path(path)):
                record: dict[str, Any] = {"run": str(run)}
                record.update({key: _number(row.get(key)) for key in METRIC_COLUMNS})
                mixture = {k: _number(v) for k, v in row.items() if k.startswith(MIXTURE_PREFIX)}
                shares.update(mixture)
                records.append({**record, **mixture})
    df = pd.DataFrame.from_records(records, columns=["run", *METRIC_COLUMNS, *sorted(shares)])
    df = df.drop_duplicates(subset=["run", "step"], keep="last")
    df["step"] = df["step"].astype("int64")
    return df.sort_values(["run", "step"], kind="stable").reset_index(drop=True)


def load_evals(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Evaluation JSONs in long format: one row per (run, step, task, metric) with EVAL_COLUMNS."""
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"evaluation file not found: {path}")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from e
        for key in _EVAL_REQUIRED:
            if not isinstance(doc, dict) or doc.get(key) is None:
                raise ValueError(f"{path}: evaluation has no {key!r} (needs {', '.join(_EVAL_REQUIRED)})")
        if not isinstance(doc["metrics"], dict):
            raise ValueError(f"{path}: 'metrics' must be an object, got {type(doc['metrics']).__name__}")
        for metric, value in doc["metrics"].items():
            records.append(
                {
                    "run": str(doc["run"]),
                    "step": int(doc["step"]),
                    "tokens_seen": _number(doc.get("tokens_seen")),
                    "task": str(doc["task"]),
                    "kind": str(doc["kind"]),
                    "metric": str(metric),
                    "value": _number(value),
                }
            )
    df = pd.DataFrame.from_records(records, columns=list(EVAL_COLUMNS))
    # The same evaluation listed twice (e.g. a re-run) must not double-count: the later file wins.
    df = df.drop_duplicates(subset=["run", "step", "task", "metric"], keep="last")
    df["step"] = df["step"].astype("int64")
    return df.sort_values(["run", "step", "task", "metric"], kind="stable").reset_index(drop=True)


# Within a task: loss metrics, then each accuracy next to its stderr; unknown metrics last, alphabetically.
_METRIC_ORDER = ("loss", "weighted_loss", "perplexity", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


def _column_order(column: str) -> tuple[str, int, str]:
    task, metric = column.split("/", 1)
    rank = _METRIC_ORDER.index(metric) if metric in _METRIC_ORDER else len(_METRIC_ORDER)
    return task, rank, metric


BASELINE_COLUMNS = ("run", "task", "kind", "n", "loss")


def load_baselines(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Baseline JSONs (an n-gram's ``{"run", "task", "kind", "n", "metrics": {"loss"}}``), one row each."""
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"baseline file not found: {path}")
        doc = json.loads(path.read_text(encoding="utf-8"))
        for key in ("run", "task", "kind", "metrics"):
            if not isinstance(doc, dict) or doc.get(key) is None:
                raise ValueError(f"{path}: baseline has no {key!r}")
        loss = _number(doc["metrics"].get("loss"))
        records.append({"run": str(doc["run"]), "task": str(doc["task"]), "kind": str(doc["kind"]),
                        "n": _number(doc.get("n")), "loss": loss})  # fmt: skip
    return pd.DataFrame.from_records(records, columns=list(BASELINE_COLUMNS))


def summary_table(
    evals_df: pd.DataFrame, metrics_df: pd.DataFrame, baselines_df: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per evaluated (run, step): ``tokens_seen``, ``train_loss``, a ``<task>/<metric>`` column each.

    ``train_loss`` is the training loss logged at exactly that step (NaN if the step was not logged, e.g.
    step 0). ``tokens_seen`` comes from the evaluations, else from the training metrics at that step.
    A baseline (``baselines_df``, e.g. an n-gram) is a ``<task>/loss`` column of its run's rows, beside the
    model's losses.
    """
    keys = ["run", "step"]
    if evals_df.empty:
        return pd.DataFrame(columns=[*keys, "tokens_seen", "train_loss"])
    long = evals_df.assign(column=evals_df["task"] + "/" + evals_df["metric"])
    long = long.drop_duplicates(subset=[*keys, "column"], keep="last")
    wide = long.set_index([*keys, "column"])["value"].unstack("column")
    wide.columns.name = None
    wide = wide[sorted(wide.columns, key=_column_order)]
    tokens = evals_df.groupby(keys)["tokens_seen"].max().rename("tokens_seen")
    table = wide.join(tokens).reset_index()
    train = metrics_df[keys + ["loss", "tokens_seen"]].rename(
        columns={"loss": "train_loss", "tokens_seen": "train_tokens_seen"}
    )
    table = table.merge(train, on=keys, how="left")
    table["tokens_seen"] = table["tokens_seen"].fillna(table["train_tokens_seen"])
    table = table.drop(columns="train_tokens_seen")
    if baselines_df is not None:
        for row in baselines_df.itertuples(index=False):
            column = f"{row.task}/loss"
            if column not in table.columns:
                table[column] = math.nan
            table.loc[table["run"] == row.run, column] = row.loss
    metric_cols = [c for c in table.columns if "/" in c]
    table = table[[*keys, "tokens_seen", "train_loss", *metric_cols]]
    if table["tokens_seen"].notna().all():
        table["tokens_seen"] = table["tokens_seen"].astype("int64")
    return table.sort_values(keys, kind="stable").reset_index(drop=True)
