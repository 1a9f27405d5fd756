"""Report figures (PNG + SVG) and ``write_report``, the entry point of the workflow's report rule.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot: no global
figure state, no GUI backend selection, nothing leaks between calls or threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from lmrepro.report.summary import MIXTURE_PREFIX, load_baselines, load_evals, load_metrics, summary_table
from lmrepro.report.tables import write_html_table, write_text_samples_html

PLOT_NAMES = ("loss", "perplexity", "learning_rate", "throughput", "memory", "eval_accuracy", "mixture")
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


def _marker_size(styles: dict, run: str) -> float:
    """Smaller hollow markers for later runs: runs with equal results show as concentric rings, not one."""
    return 9.0 - 2.5 * (sorted(styles).index(run) % 3)


def _new_axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(8, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _label(ax, title, xlabel, ylabel)
    return fig, ax


def _label(ax: Axes, title: str, xlabel: str, ylabel: str) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if xlabel == "step":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "2.5" steps on short runs
    if xlabel == "tokens seen":
        ax.xaxis.set_major_formatter(EngFormatter())


def _new_panels(title: str, count: int, columns: int = 2) -> tuple[Figure, list[Axes]]:
    """A figure of `count` panels (at least one), `columns` wide, under one title."""
    count = max(count, 1)
    columns = min(columns, count)
    rows = -(-count // columns)
    fig = Figure(figsize=(5.2 * columns, 3.8 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    axes = [fig.add_subplot(rows, columns, i + 1) for i in range(count)]
    return fig, axes


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
                ms=_marker_size(styles, run),
                mfc="none",
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


def _draw_per_run(
    ax: Axes, metrics_df: pd.DataFrame, column: str, formatter: EngFormatter | None = None, scale: float = 1.0
) -> bool:
    """`column` (times `scale`) of every run against step, from 0; False (and a "no data" note) without it."""
    if not _has(metrics_df, "run", "step", column):
        _no_data(ax, f"no '{column}' in the training metrics")
        return False
    rows_all = metrics_df.dropna(subset=[column])
    styles = _styles(rows_all["run"])
    for run, rows in rows_all.groupby("run", sort=True):
        ax.plot(
            rows["step"],
            rows[column] * scale,
            **styles[run],
            lw=1.2,
            marker="." if len(rows) < 50 else None,
            label=run,
        )
    if formatter is not None:
        ax.yaxis.set_major_formatter(formatter)
    # From 0 so that relative changes are not exaggerated; headroom so the top line stays visible.
    top = float(rows_all[column].max()) * scale
    ax.set_ylim(0, top * 1.08 if top > 0 else None)
    ax.legend(fontsize="small")
    return True


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
        _draw_per_run(ax, metrics_df, column, formatter)
        return _save(fig, out_base)


def plot_learning_rate(metrics_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """Learning rate of every run against optimizer step (warmup and decay shape)."""
    return _per_run_line(metrics_df, "lr", out_base, "Learning rate schedule", "learning rate")


def plot_throughput(metrics_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """Tokens/s per device and model FLOP utilisation (MFU) of every run against optimizer step. MFU is the
    trainer's (the model's FLOPs per token × tokens/s over the device's bf16 peak); where the peak is unknown
    (CPU) the trainer logs no MFU and the right panel shows the achieved model TFLOP/s per device instead."""
    with matplotlib.rc_context(_RC):
        fig, (speed, flops) = _new_panels("Training throughput per device", 2)
        _label(speed, "Tokens per second", "step", "tokens/s per device")
        _draw_per_run(speed, metrics_df, "tokens_per_s_per_device", EngFormatter())
        if _has(metrics_df, "run", "step", "mfu"):
            _label(flops, "Model FLOP utilisation", "step", "MFU (% of the device's bf16 peak)")
            _draw_per_run(flops, metrics_df, "mfu", scale=100.0)
        else:
            _label(flops, "Model TFLOP/s (no MFU: device peak unknown)", "step", "model TFLOP/s per device")
            _draw_per_run(flops, metrics_df, "tflops_per_device")
        return _save(fig, out_base)


def plot_memory(metrics_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """Peak memory of every run against optimizer step: the CUDA caching allocator's peak reserved bytes on a
    GPU, the process's peak resident set on CPU (as the trainer logs ``peak_memory_gib``)."""
    return _per_run_line(metrics_df, "peak_memory_gib", out_base, "Peak memory", "peak memory (GiB)")


def plot_perplexity(metrics_df: pd.DataFrame, evals_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """Held-out perplexity (exp of the loss evals' mean loss; a loss eval's own ``perplexity`` where it has
    one) of every run against tokens seen, one line per (run, task), on a log scale; in-loop validation
    (exp of ``val_loss``) dotted."""
    with matplotlib.rc_context(_RC):
        fig, ax = _new_axes("Held-out perplexity", "tokens seen", "perplexity (exp of loss, log scale)")
        usable = _has(evals_df, "run", "task", "kind", "metric", "tokens_seen", "value")
        loss = evals_df[(evals_df["kind"] == "loss") & (evals_df["metric"] == "loss")] if usable else None
        held = loss.dropna(subset=["tokens_seen", "value"]) if loss is not None else pd.DataFrame()
        validated = (
            metrics_df.dropna(subset=["tokens_seen", "val_loss"])
            if _has(metrics_df, "run", "tokens_seen", "val_loss")
            else pd.DataFrame(columns=["run"])
        )
        if held.empty and validated.empty:
            _no_data(ax, "no loss evaluations or in-loop validation")
            return _save(fig, out_base)
        styles = _styles([*held.get("run", []), *validated["run"]])
        tasks = sorted(held["task"].unique()) if not held.empty else []
        for (run, task), rows in held.groupby(["run", "task"], sort=True) if tasks else ():
            rows = rows.sort_values("tokens_seen")
            ax.plot(
                rows["tokens_seen"],
                np.exp(rows["value"]),
                **styles[run],
                marker=_MARKERS[tasks.index(task) % len(_MARKERS)],
                ms=6,
                lw=1.5,
                label=f"{run}: {task}",
            )
        for run, rows in validated.groupby("run", sort=True):
            ax.plot(rows["tokens_seen"], np.exp(rows["val_loss"]), color=styles[run]["color"], ls=":",
                    marker="x", ms=4, lw=1.2, label=f"{run}: in-loop validation")  # fmt: skip
        ax.set_yscale("log")
        ax.legend(fontsize="small")
        return _save(fig, out_base)


def plot_mixture(metrics_df: pd.DataFrame, out_base: Path) -> list[Path]:
    """The realised token share of each mixture source against tokens seen, one panel per mixture run (the
    trainer logs ``mixture/<source>``: the share of the windows scheduled so far)."""
    columns = [c for c in metrics_df.columns if c.startswith(MIXTURE_PREFIX)]
    runs = sorted(metrics_df.dropna(subset=columns, how="all")["run"].unique()) if columns else []
    with matplotlib.rc_context(_RC):
        fig, axes = _new_panels("Realised data-mixture shares", len(runs))
        if not runs:
            _no_data(axes[0], "no run trains on a mixture")
            return _save(fig, out_base)
        for ax, run in zip(axes, runs, strict=True):
            rows = metrics_df[metrics_df["run"] == run].dropna(subset=["tokens_seen"])
            _label(ax, run, "tokens seen", "token share")
            for i, column in enumerate(c for c in columns if rows[c].notna().any()):
                source = column[len(MIXTURE_PREFIX) :]
                ax.plot(rows["tokens_seen"], rows[column], ls=_LINESTYLES[i % len(_LINESTYLES)], lw=1.5,
                        marker="." if len(rows) < 50 else None, label=source)  # fmt: skip
            ax.set_ylim(0, 1)
            ax.legend(fontsize="small")
        return _save(fig, out_base)


def _panel_metrics(evals_df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(metric, its rows) per accuracy-like panel: every metric of a non-loss evaluation (acc, acc_norm,
    exact_match, …; stderrs are error bars, not panels), then a masked LM's masked-token accuracy."""
    if not _has(evals_df, "run", "task", "kind", "metric", "tokens_seen", "value"):
        return []
    scored = evals_df[(evals_df["kind"] != "loss") & ~evals_df["metric"].str.endswith("_stderr")]
    panels = [(m, evals_df[evals_df["kind"] != "loss"]) for m in sorted(scored["metric"].unique())]
    masked = evals_df[
        (evals_df["kind"] == "loss") & evals_df["metric"].isin(["accuracy", "baseline_accuracy"])
    ]
    if (masked["metric"] == "accuracy").any():
        panels.append(("masked-token accuracy", masked))
    return panels


def plot_eval_accuracy(evals_df: pd.DataFrame, out_base: Path, *, chance: float | None = 0.25) -> list[Path]:
    """Every evaluation metric but the losses against tokens seen, one panel per metric (multiple choice:
    ``acc`` and ``acc_norm`` ± stderr, with the chance line), a line per (run, task); a masked LM's
    masked-token accuracy (loss evals' ``accuracy``) with its most-frequent-token baseline."""
    panels = _panel_metrics(evals_df)
    with matplotlib.rc_context(_RC):
        fig, axes = _new_panels("Evaluation metrics", len(panels))
        if not panels:
            _no_data(axes[0], "no multiple-choice or masked-token evaluations")
            return _save(fig, out_base)
        styles = _styles(pd.concat([rows["run"] for _, rows in panels]))
        for ax, (metric, rows) in zip(axes, panels, strict=True):
            if metric == "masked-token accuracy":
                _label(ax, metric, "tokens seen", "accuracy (masked tokens)")
                _plot_masked(ax, rows, styles)
            else:
                _label(ax, metric, "tokens seen", f"{metric} (± 1 stderr)")
                _plot_mc(ax, rows, metric, styles)
                if chance is not None and metric in ("acc", "acc_norm"):
                    ax.axhline(chance, color="0.3", ls="--", lw=1, label=f"chance ({chance:g})")
            values = rows.loc[rows["metric"].isin([metric, "accuracy"]), "value"]
            if values.between(0, 1).all():  # a rate: the whole range, so small gains are not magnified
                ax.set_ylim(0, 1.12)  # headroom: a rate at 1.0 is not hidden under the legend
                ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
            ax.legend(fontsize="small", loc="upper left", ncols=2)
        return _save(fig, out_base)


def _wide(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, task, step) with tokens seen and a column per metric."""
    wide = rows.pivot_table(
        index=["run", "task", "step"], columns="metric", values="value", aggfunc="last", dropna=False
    )
    tokens = rows.groupby(["run", "task", "step"])["tokens_seen"].max()
    return wide.join(tokens).reset_index()


def _plot_mc(ax: Axes, mc: pd.DataFrame, metric: str, styles: dict) -> None:
    wide = _wide(mc[mc["metric"].isin([metric, f"{metric}_stderr"])])
    tasks = sorted(wide["task"].unique())
    for (run, task), rows in wide.groupby(["run", "task"], sort=True):
        rows = rows.dropna(subset=[metric]).sort_values("tokens_seen")
        if rows.empty:
            continue
        err = rows.get(f"{metric}_stderr")
        ax.errorbar(
            rows["tokens_seen"],
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
    for (run, task), rows in _wide(masked).groupby(["run", "task"], sort=True):
        rows = rows.sort_values("tokens_seen")
        color = styles[run].get("color")
        if "accuracy" in rows:
            ax.plot(
                rows["tokens_seen"],
                rows["accuracy"],
                color=color,
                marker="o",
                ms=5,
                lw=1.5,
                label=f"{run}: {task} masked-token accuracy",
            )
        if "baseline_accuracy" in rows:
            ax.plot(
                rows["tokens_seen"],
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
    text_sample_paths: Sequence[Path] = (),
) -> dict[str, Path]:
    """Write ``summary.csv`` (as a table: ``summary.html``), ``text_samples.html`` and the figures of
    PLOT_NAMES (PNG + SVG) into ``out_dir``; return {file name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_df = load_metrics(metrics_by_run)
    evals_df = load_evals(eval_paths)
    baselines_df = load_baselines(baseline_paths)
    written: dict[str, Path] = {}
    summary = out_dir / "summary.csv"
    table = summary_table(evals_df, metrics_df, baselines_df)
    table.to_csv(summary, index=False)
    written[summary.name] = summary
    page = write_html_table(table, out_dir / "summary.html", "One row per evaluated checkpoint")
    written[page.name] = page
    samples = write_text_samples_html(text_sample_paths, out_dir / "text_samples.html")
    written[samples.name] = samples
    paths = [
        *plot_loss(metrics_df, evals_df, out_dir / "loss", baselines_df),
        *plot_perplexity(metrics_df, evals_df, out_dir / "perplexity"),
        *plot_learning_rate(metrics_df, out_dir / "learning_rate"),
        *plot_throughput(metrics_df, out_dir / "throughput"),
        *plot_memory(metrics_df, out_dir / "memory"),
        *plot_eval_accuracy(evals_df, out_dir / "eval_accuracy", chance=chance),
        *plot_mixture(metrics_df, out_dir / "mixture"),
    ]
    written.update({p.name: p for p in paths})
    return written
