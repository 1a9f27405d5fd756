"""Report figures (PNG + SVG) and ``write_report``, the entry point of the workflow's report rule.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot: no global
figure state, no GUI backend selection, nothing leaks between calls or threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from lmrepro.report.summary import load_baselines, load_evals, load_metrics, summary_table

PLOT_NAMES = ("loss", "learning_rate", "throughput", "eval_accuracy")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
# Fixed SVG ids and no timestamps: re-running the report on the same inputs gives byte-identical files.
_RC = {"svg.hashsalt": "lmrepro", "font.size": 10, "axes.grid": True, "grid.alpha": 0.3}


_LINESTYLES = ("-", "--", "-.", ":")


def _styles(runs: Iterable[str]) -> dict[str, dict[str, str]]:
    """Colour and line style per run, the same in every figure; runs with identical curves (e.g. the same
    LR schedule) stay distinguishable because the line style differs too."""
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    return {
        run: {"color": cycle[i % len(cycle)], "ls": _LINESTYLES[i % len(_LINESTYLES)]}
        for i, run in enumerate(sorted(set(runs)))
    }


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if xlabel == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "2.5" steps on short runs
    return fig, ax


def _no_data(ax: Axes, what: str) -> None:
    ax.text(
        0.5,
        0.5,
        f"no data\n({what})",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=14,
        color="0.4",
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig: Figure, out_base: Path) -> list[Path]:
    out_base = Path(out_base)
    out_base.parent.mkdir(parents=True, exist_ok=True)
    # Append rather than with_suffix: a base name containing a dot must not lose its tail.
    png, svg = Path(f"{out_base}.png"), Path(f"{out_base}.svg")
    with matplotlib.rc_context(_RC):
        fig.savefig(png, dpi=120, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None, "Creator": None})
    return [png, svg]


def _has(df: pd.DataFrame, *columns: str) -> bool:
    return all(c in df.columns for c in columns) and not df.dropna(subset=list(columns)).empty


def plot_loss(
    metrics_df: pd.DataFrame, evals_df: pd.DataFrame, out_base: Path, baselines_df: pd.DataFrame | None = None
) -> list[Path]:
    """Training loss (lines) and held-out loss (markers) of every run against tokens seen; baselines (an
    n-gram's held-out loss) as dotted horizontal lines in their run's colour."""
    with matplotlib.rc_context(_RC):
        fig, ax = _new_axes("Training and held-out loss", "tokens seen", "loss (nats/token)")
        train = (
            metrics_df.dropna(subset=["tokens_seen", "loss"])
            if _has(metrics_df, "run", "tokens_seen", "loss")
            else pd.DataFrame(columns=["run"])
        )
        held = (
            evals_df[(evals_df["kind"] == "loss") & (evals_df["metric"] == "loss")].dropna(
                subset=["tokens_seen", "value"]
            )
            if _has(evals_df, "run", "task", "kind", "metric", "tokens_seen", "value")
            else pd.DataFrame(columns=["run", "task"])
        )
        if train.empty and held.empty:
            _no_data(ax, "no training metrics or loss evaluations")
            return _save(fig, out_base)
        styles = _styles([*train["run"], *held["run"]])
        for run, rows in train.groupby("run", sort=True):
            ax.plot(
                rows["tokens_seen"],
                rows["loss"],
                **styles[run],
                lw=1.2,
                marker="." if len(rows) < 50 else None,  # a lone logged step must still show up
                label=f"{run}: train",
            )
        validated = (
            metrics_df.dropna(subset=["tokens_seen", "val_loss"])
            if _has(metrics_df, "run", "tokens_seen", "val_loss")
            else pd.DataFrame(columns=["run"])
        )
        for run, rows in validated.groupby("run", sort=True):  # in-loop validation (validation.every_steps)
            ax.plot(
                rows["tokens_seen"],
                rows["val_loss"],
                color=styles[run]["color"],
                ls=":",
                lw=1.2,
                marker="x",
                ms=4,
                label=f"{run}: in-loop validation",
            )
        tasks = sorted(held["task"].unique())
        for (run, task), rows in held.groupby(["run", "task"], sort=True):
            rows = rows.sort_values("tokens_seen")
            ax.plot(
                rows["tokens_seen"],
                rows["value"],
                ls="none",
                marker=_MARKERS[tasks.index(task) % len(_MARKERS)],
                ms=7,
                mfc="white",
                mew=1.8,
                color=styles[run]["color"],
                label=f"{run}: {task}",
            )
        baselines = baselines_df if baselines_df is not None else pd.DataFrame(columns=["task"])
        baseline_tasks = sorted(baselines["task"].unique())
        for row in baselines.itertuples(index=False):
            color = styles[row.run]["color"] if row.run in styles else "0.3"
            ls = (":", "-.", (0, (1, 3)), (0, (5, 2)))[baseline_tasks.index(row.task) % 4]
            n = f"{int(row.n)}-gram" if row.n == row.n else row.kind  # NaN n: the kind names it
            label = f"{row.run}: {row.task} ({n}) {row.loss:.3f}"
            ax.axhline(row.loss, color=color, ls=ls, lw=1.5, label=label)
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.legend(fontsize="small")
        return _save(fig, out_base)


def _per_run_line(
    metrics_df: pd.DataFrame,
    column: str,
    out_base: Path,
    title: str,
    ylabel: str,
    formatter: EngFormatter | None = None,
) -> list[Path]:
    with matplotlib.rc_context(_RC):
        fig, ax = _new_axes(title, "step", ylabel)
        if not _has(metrics_df, "run", "step", column):
            _no_data(ax, f"no '{column}' in the training metrics")
            return _save(fig, out_base)
        rows_all = metrics_df.dropna(subset=[column])
        styles = _styles(rows_all["run"])
        for run, rows in rows_all.groupby("run", sort=True):
            ax.plot(
                rows["step"],
                rows[column],
                **styles[run],
                lw=1.2,
                marker="." if len(rows) < 50 else None,
                label=run,
            )
        if formatter is not None:
            ax.yaxis.set_major_formatter(formatter)
        # From 0 so that relative changes are not exaggerated; headroom so the top line stays visible.
        top = float(rows_all[column].max())
        ax.set_ylim(0, top * 1.08 if top > 0 else None)
        ax.legend(fontsize="small")
        return _save(fig, out_base)


def plot_learning_rate(metrics_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """Learning rate of every run against optimizer step (warmup and decay shape)."""
    return _per_run_line(metrics_df, "lr", out_base, "Learning rate schedule", "learning rate")


def plot_throughput(metrics_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """Training throughput per device (tokens/s) of every run against optimizer step."""
    return _per_run_line(
        metrics_df,
        "tokens_per_s_per_device",
        out_base,
        "Training throughput per device",
        "throughput (tokens/s per device)",
        EngFormatter(),
    )


def plot_eval_accuracy(
    evals_df: pd.DataFrame, out_base: Path, *, chance: float | None = 0.25, metric: str = "acc"
) -> list[Path]:
    """Multiple-choice accuracy (± stderr) against step, one line per (run, task), with a chance line; a
    masked LM's masked-token accuracy (loss evals' ``accuracy``) with its most-frequent-token baseline."""
    with matplotlib.rc_context(_RC):
        fig, ax = _new_axes("Accuracy", "step", f"accuracy (multiple choice: {metric}, ± 1 stderr)")
        usable = _has(evals_df, "run", "task", "step", "kind", "metric", "value")
        mc = evals_df[evals_df["kind"] == "multiple_choice"] if usable else pd.DataFrame()
        masked = (
            evals_df[
                (evals_df["kind"] == "loss") & evals_df["metric"].isin(["accuracy", "baseline_accuracy"])
            ]
            if usable
            else pd.DataFrame()
        )
        has_mc = not mc.empty and (mc["metric"] == metric).any()
        if not has_mc and masked.empty:
            _no_data(ax, "no multiple-choice or masked-token evaluations")
            return _save(fig, out_base)
        runs = pd.concat([mc["run"], masked["run"]]) if has_mc else masked["run"]
        styles = _styles(runs)
        if has_mc:
            _plot_mc(ax, mc, metric, styles)
            if chance is not None:
                ax.axhline(chance, color="0.3", ls="--", lw=1, label=f"chance ({chance:g})")
        if not masked.empty:
            _plot_masked(ax, masked, styles)
            mc_label = f"multiple choice: {metric} ± 1 stderr; " if has_mc else ""
            ax.set_ylabel(f"accuracy ({mc_label}masked tokens)")
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
        return _save(fig, out_base)


def _plot_mc(ax: Axes, mc: pd.DataFrame, metric: str, styles: dict) -> None:
    wide = mc.pivot_table(index=["run", "task", "step"], columns="metric", values="value", aggfunc="last")
    wide = wide.reset_index()
    tasks = sorted(wide["task"].unique())
    for (run, task), rows in wide.groupby(["run", "task"], sort=True):
        rows = rows.dropna(subset=[metric]).sort_values("step")
        err = rows.get(f"{metric}_stderr")
        ax.errorbar(
            rows["step"],
            rows[metric],
            yerr=err,
            **styles[run],
            marker=_MARKERS[tasks.index(task) % len(_MARKERS)],
            ms=6,
            lw=1.2,
            capsize=3,
            label=f"{run}: {task}",
        )


def _plot_masked(ax: Axes, masked: pd.DataFrame, styles: dict) -> None:
    wide = masked.pivot_table(index=["run", "task", "step"], columns="metric", values="value", aggfunc="last")
    for (run, task), rows in wide.reset_index().groupby(["run", "task"], sort=True):
        rows = rows.sort_values("step")
        color = styles[run].get("color")
        if "accuracy" in rows:
            ax.plot(
                rows["step"],
                rows["accuracy"],
                color=color,
                marker="o",
                ms=5,
                lw=1.5,
                label=f"{run}: {task} masked-token accuracy",
            )
        if "baseline_accuracy" in rows:
            ax.plot(
                rows["step"],
                rows["baseline_accuracy"],
                color=color,
                ls=":",
                lw=1.2,
                label=f"{run}: {task} most-frequent-token baseline",
            )


def write_report(
    metrics_by_run: dict[str, Sequence[Path]],
    eval_paths: Sequence[Path],
    out_dir: Path,
    *,
    chance: float | None = 0.25,
    baseline_paths: Sequence[Path] = (),
) -> dict[str, Path]:
    """Write ``summary.csv`` and the four figures (PNG + SVG) into ``out_dir``; return {file name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_df = load_metrics(metrics_by_run)
    evals_df = load_evals(eval_paths)
    baselines_df = load_baselines(baseline_paths)
    written: dict[str, Path] = {}
    summary = out_dir / "summary.csv"
    summary_table(evals_df, metrics_df, baselines_df).to_csv(summary, index=False)
    written[summary.name] = summary
    paths = [
        *plot_loss(metrics_df, evals_df, out_dir / "loss", baselines_df),
        *plot_learning_rate(metrics_df, out_dir / "learning_rate"),
        *plot_throughput(metrics_df, out_dir / "throughput"),
        *plot_eval_accuracy(evals_df, out_dir / "eval_accuracy", chance=chance),
    ]
    written.update({p.name: p for p in paths})
    return written
