"""The summary table as a standalone HTML page: the Snakemake report shows HTML inline (a CSV is only a
download link there)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

_STYLE = """
body { font-family: sans-serif; font-size: 13px; margin: 1em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
"""


def _cell(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not logged / not evaluated
            return ""
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return html.escape(str(value))


def write_html_table(table: pd.DataFrame, path: Path, title: str) -> Path:
    """`table` as an HTML page: numbers to 4 significant digits, empty cells for NaN."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>\n"
        for row in table.itertuples(index=False, name=None)
    )
    page = (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head>\n<body><h3>{html.escape(title)}</h3>\n"
        f"<table><thead><tr>{head}</tr></thead>\n<tbody>\n{rows}</tbody></table></body></html>\n"
    )
    Path(path).write_text(page, encoding="utf-8")
    return Path(path)
