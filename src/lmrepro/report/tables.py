"""The summary table and the text samples as standalone HTML pages: the Snakemake report shows HTML inline (a
CSV is only a download link there)."""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
td.text { text-align: left; white-space: pre-wrap; font-family: monospace; max-width: 40em; }
"""


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not logged / not evaluated
            return ""
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return html.escape(str(value))


def _text(value: str) -> str:
    """Model output for a cell: control characters (a tiny model writes some) shown as escapes."""
    shown = "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in value)
    return f"<td class='text'>{html.escape(shown)}</td>"


def _table(columns: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(row) + "</tr>\n" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody></table>\n"


def _page(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head>\n<body><h3>{html.escape(title)}</h3>\n{body}</body></html>\n"
    )


def write_html_table(table: pd.DataFrame, path: Path, title: str) -> Path:
    """`table` as an HTML page: numbers to 4 significant digits, empty cells for NaN."""
    rows = ([f"<td>{_cell(v)}</td>" for v in row] for row in table.itertuples(index=False, name=None))
    Path(path).write_text(_page(title, _table(table.columns, rows)), encoding="utf-8")
    return Path(path)


def write_text_samples_html(sample_paths: Iterable[str | Path], path: Path) -> Path:
    """Every run's text samples (lmrepro.eval.text_samples JSONs): per run, a row per (step, prompt) with the
    greedy and the sampled continuation."""
    sections = []
    for sample_path in sample_paths:
        doc = json.loads(Path(sample_path).read_text(encoding="utf-8"))
        settings = ", ".join(f"{k} {v}" for k, v in doc["settings"].items())
        rows = (
            [f"<td>{step['step']}</td>", f"<td>{_cell(step.get('tokens_seen'))}</td>"]
            + [_text(s[key]) for key in ("prompt", "greedy", "sampled")]
            for step in doc["steps"]
            for s in step["samples"]
        )
        table = _table(["step", "tokens seen", "prompt", "greedy", "sampled"], rows)
        sections.append(f"<h4>{html.escape(str(doc['run']))}</h4><p>{html.escape(settings)}</p>\n{table}")
    body = "".join(sections) or "<p>No run has text samples (runs.&lt;run&gt;.text_samples).</p>\n"
    Path(path).write_text(_page("Text samples at each exported step", body), encoding="utf-8")
    return Path(path)
