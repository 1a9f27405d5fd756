"""lmrepro.report: loading metrics/evaluations, summary.csv values, and that every figure is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lmrepro.report.plots import PLOT_NAMES, plot_eval_accuracy, plot_loss, write_report
from lmrepro.report.summary import load_evals, load_metrics, summary_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(step: int, loss: float, **extra) -> dict:
    return {
        "step": step,
        "tokens_seen": step * 1000,
        "loss": loss,
        "lr": 1e-3 * step / 10,
        "grad_norm": 1.0,
        "tokens_per_s": 4000.0,
        "tokens_per_s_per_device": 2000.0 + step,
        "mfu": None,
        "peak_memory_gib": None,
        "data_wait_s": 0.01,
        **extra,
    }


def _eval(root: Path, run: str, step: int, task: str, kind: str, metrics: dict) -> Path:
    path = root / f"{run}-{step}-{task}.json"
    path.write_text(
        json.dumps(
            {
                "run": run,
                "step": step,
                "tokens_seen": step * 1000,
                "task": task,
                "kind": kind,
                "metrics": metrics,
                "provenance": {"ignored": True},
            }
        )
    )
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[dict[str, list[Path]], list[Path]]:
    # Run "a" has two segments; steps 10 and 20 appear in both and the second segment's rows must win.
    seg1 = _jsonl(tmp_path / "a1.jsonl", [_row(s, 5.0 - s / 10, origin="x") for s in (1, 5, 10, 20)])
    seg2 = _jsonl(tmp_path / "a2.jsonl", [_row(10, 4.25), _row(20, 3.5), _row(30, 3.0)])
    # Run "b": one segment, a row missing optional keys, and a blank line.
    b = tmp_path / "b.jsonl"
    b.write_text(json.dumps(_row(10, 4.75)) + "\n\n" + json.dumps({"step": 20, "loss": 4.0}) + "\n")
    evals = []
    for run in ("a", "b"):
        for step in (0, 10, 20):
            evals.append(
                _eval(
                    tmp_path,
                    run,
                    step,
                    "heldout",
                    "loss",
                    {"loss": 6.0 - step / 10, "perplexity": math.exp(6.0 - step / 10)},
                )
            )
            evals.append(
                _eval(
                    tmp_path,
                    run,
                    step,
                    "synthetic_mc",
                    "multiple_choice",
                    {"acc": 0.25 + step / 100, "acc_stderr": 0.05, "acc_norm": 0.3, "acc_norm_stderr": "N/A"},
                )
            )
    return {"a": [seg1, seg2], "b": [b]}, evals


def test_load_metrics_last_row_wins(inputs) -> None:
    metrics_by_run, _ = inputs
    df = load_metrics(metrics_by_run)
    a = df[df["run"] == "a"].set_index("step")
    assert list(a.index) == [1, 5, 10, 20, 30]
    assert a.loc[10, "loss"] == 4.25 and a.loc[20, "loss"] == 3.5
    b = df[df["run"] == "b"].set_index("step")
    assert list(b.index) == [10, 20] and math.isnan(b.loc[20, "lr"]) and b.loc[20, "loss"] == 4.0
    assert df["mfu"].isna().all()
    assert "origin" not in df.columns
    assert set(load_metrics([metrics_by_run["b"][0]])["run"]) == {"default"}


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_metrics({"a": [tmp_path / "missing.jsonl"]})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row(1, 1.0)) + "\n" + '{"step": 2, "loss"')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_metrics({"a": [bad]})
    nostep = _jsonl(tmp_path / "nostep.jsonl", [{"loss": 1.0}])
    with pytest.raises(ValueError, match=r"nostep\.jsonl:1.*'step'"):
        load_metrics({"a": [nostep]})
    ev = tmp_path / "ev.json"
    ev.write_text(json.dumps({"run": "a", "step": 1, "task": "t", "kind": "loss"}))
    with pytest.raises(ValueError, match=r"ev\.json.*'metrics'"):
        load_evals([ev])


def test_summary_table_values(inputs) -> None:
    metrics_by_run, evals = inputs
    table = summary_table(load_evals(evals), load_metrics(metrics_by_run))
    assert list(table[["run", "step"]].itertuples(index=False, name=None)) == [
        ("a", 0),
        ("a", 10),
        ("a", 20),
        ("b", 0),
        ("b", 10),
        ("b", 20),
    ]
    assert list(table.columns[:4]) == ["run", "step", "tokens_seen", "train_loss"]
    assert list(table.columns[4:]) == [
        "heldout/loss",
        "heldout/perplexity",
        "synthetic_mc/acc",
        "synthetic_mc/acc_stderr",
        "synthetic_mc/acc_norm",
        "synthetic_mc/acc_norm_stderr",
    ]
    row = table.set_index(["run", "step"])
    assert row.loc[("a", 10), "train_loss"] == 4.25  # the second segment's row, not 4.0
    assert row.loc[("a", 20), "train_loss"] == 3.5
    assert math.isnan(row.loc[("a", 0), "train_loss"])  # step 0 is never a logged training step
    assert row.loc[("b", 20), "train_loss"] == 4.0
    assert row.loc[("b", 20), "tokens_seen"] == 20_000
    assert row.loc[("a", 20), "synthetic_mc/acc"] == pytest.approx(0.45)
    assert row.loc[("a", 10), "heldout/perplexity"] == math.exp(5.0)
    assert row["synthetic_mc/acc_norm_stderr"].isna().all()  # "N/A" from lm-eval


def test_write_report_files_and_csv(inputs, tmp_path: Path) -> None:
    metrics_by_run, evals = inputs
    out = tmp_path / "report"
    written = write_report(metrics_by_run, evals, out)
    expected = {"summary.csv", "summary.html", "text_samples.html"} | {
        f"{name}.{ext}" for name in PLOT_NAMES for ext in ("png", "svg")
    }
    assert set(written) == expected
    for name, path in written.items():
        assert path == out / name and path.stat().st_size > 0
    for name in PLOT_NAMES:
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == 6 and not csv.duplicated(["run", "step"]).any()
    a10 = csv[(csv["run"] == "a") & (csv["step"] == 10)].iloc[0]
    assert a10["train_loss"] == 4.25 and a10["heldout/loss"] == 5.0 and a10["synthetic_mc/acc"] == 0.35
    # Same inputs, same bytes: Snakemake reruns and report diffs stay quiet.
    first = {n: p.read_bytes() for n, p in written.items()}
    again = write_report(metrics_by_run, evals, out)
    assert {n: p.read_bytes() for n, p in again.items()} == first


def test_no_data_does_not_crash(tmp_path: Path) -> None:
    written = write_report({}, [], tmp_path / "empty")
    assert all(p.stat().st_size > 0 for p in written.values())
    assert (tmp_path / "empty" / "loss.png").read_bytes()[:8] == PNG_SIGNATURE
    assert list(pd.read_csv(tmp_path / "empty" / "summary.csv").columns) == [
        "run",
        "step",
        "tokens_seen",
        "train_loss",
    ]
    # Metrics but no evaluations, and evaluations of only one kind.
    metrics = load_metrics({"a": [_jsonl(tmp_path / "m.jsonl", [_row(1, 2.0)])]})
    loss_only = load_evals([_eval(tmp_path, "a", 1, "heldout", "loss", {"loss": 2.0, "perplexity": 7.4})])
    assert len(plot_loss(metrics, load_evals([]), tmp_path / "loss_no_evals")) == 2
    assert len(plot_eval_accuracy(loss_only, tmp_path / "acc_none", chance=0.5)) == 2


def test_masked_lm_accuracy_and_baseline_in_summary_and_plot(tmp_path: Path, monkeypatch) -> None:
    """An MLM run's loss evals carry accuracy and the most-frequent-token baseline: both reach the
    summary and are drawn (two lines) on the accuracy figure, without the multiple-choice chance line."""
    import lmrepro.report.plots as plots

    evals = [
        _eval(
            tmp_path,
            "m",
            s,
            "heldout",
            "loss",
            {"loss": 5.0 - s / 100, "accuracy": a, "baseline_accuracy": 0.1},
        )
        for s, a in ((0, 0.01), (100, 0.3), (200, 0.5))
    ]
    written = write_report({"m": [_jsonl(tmp_path / "m.jsonl", [_row(100, 2.0)])]}, evals, tmp_path / "r")
    summary = pd.read_csv(written["summary.csv"])
    assert list(summary["heldout/accuracy"]) == [0.01, 0.3, 0.5]
    assert list(summary["heldout/baseline_accuracy"]) == [0.1, 0.1, 0.1]
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, out: drawn.extend(fig.axes[0].get_lines()) or [])
    plot_eval_accuracy(load_evals(evals), tmp_path / "acc", chance=0.25)
    assert sorted(line.get_label() for line in drawn) == [
        "m: heldout masked-token accuracy",
        "m: heldout most-frequent-token baseline",
    ]
    assert [list(line.get_ydata()) for line in drawn] == [[0.01, 0.3, 0.5], [0.1, 0.1, 0.1]]


def test_baselines_are_columns_beside_the_loss_and_lines_in_the_loss_plot(tmp_path) -> None:
    import json

    from lmrepro.report.plots import write_report

    evals = []
    for step, loss in ((0, 5.0), (10, 1.0)):
        path = tmp_path / f"test-{step}.json"
        path.write_text(json.dumps({"run": "r", "step": step, "tokens_seen": step * 100, "task": "test",
                                    "kind": "loss", "metrics": {"loss": loss}}))  # fmt: skip
        evals.append(path)
    baseline = tmp_path / "trigram.json"
    baseline.write_text(json.dumps({"run": "r", "task": "trigram", "kind": "ngram", "n": 3,
                                    "metrics": {"loss": 1.5}}))  # fmt: skip
    written = write_report({}, evals, tmp_path / "report", baseline_paths=[baseline])
    summary = written["summary.csv"].read_text().splitlines()
    assert summary[0].endswith("test/loss,trigram/loss")
    assert summary[1].endswith("5.0,1.5") and summary[2].endswith("1.0,1.5")
    assert "r: trigram (3-gram) 1.500" in written["loss.svg"].read_text()


def _drawn(monkeypatch) -> list:
    """Capture the figure each plot function would save: [(panel title, {label: y values})]."""
    import lmrepro.report.plots as plots

    figures: list = []

    def ydata(handle) -> list:  # a line, or an errorbar's container (its data line first)
        return list(getattr(handle, "lines", [handle])[0].get_ydata())

    def keep(fig, out):
        figures.append(
            [
                (
                    ax.get_title(),
                    {label: ydata(h) for h, label in zip(*ax.get_legend_handles_labels(), strict=True)},
                )
                for ax in fig.axes
            ]
        )
        return []

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_mixture_shares_validation_and_flops_are_loaded_and_drawn(tmp_path, monkeypatch) -> None:
    from lmrepro.report.plots import plot_mixture, plot_perplexity, plot_throughput

    rows = [
        _row(s, 3.0, **{"mixture/web": w, "mixture/code": 1 - w, "tflops_per_device": 0.5, "val_loss": v})
        for s, w, v in ((2, 0.5, 2.0), (4, 0.75, 1.0))
    ]
    metrics = load_metrics(
        {"mix": [_jsonl(tmp_path / "m.jsonl", rows)], "b": [_jsonl(tmp_path / "b.jsonl", [_row(2, 3.0)])]}
    )
    assert list(metrics.columns[-2:]) == ["mixture/code", "mixture/web"]
    evals = load_evals(
        [_eval(tmp_path, "mix", s, "val", "loss", {"loss": x}) for s, x in ((0, 3.0), (4, 1.5))]
    )
    figures = _drawn(monkeypatch)
    plot_mixture(metrics, tmp_path / "mixture")
    plot_perplexity(metrics, evals, tmp_path / "perplexity")
    plot_throughput(metrics, tmp_path / "throughput")
    (mixture,), (perplexity,), throughput = figures
    assert mixture == ("mix", {"web": [0.5, 0.75], "code": [0.5, 0.25]})  # only the mixture run has a panel
    assert perplexity[1]["mix: val"] == pytest.approx([math.exp(3.0), math.exp(1.5)])
    assert perplexity[1]["mix: in-loop validation"] == pytest.approx([math.exp(2.0), math.exp(1.0)])
    assert throughput[1][0].startswith("Model TFLOP/s") and throughput[1][1]["mix"] == [0.5, 0.5]
    with_mfu = metrics.assign(mfu=0.25)
    plot_throughput(with_mfu, tmp_path / "throughput")
    assert figures[-1][1][0] == "Model FLOP utilisation" and figures[-1][1][1]["mix"] == [25.0, 25.0]


def test_acc_and_acc_norm_each_get_a_panel_against_tokens(inputs, tmp_path, monkeypatch) -> None:
    _, evals = inputs
    figures = _drawn(monkeypatch)
    plot_eval_accuracy(load_evals(evals), tmp_path / "acc")
    (panels,) = figures
    assert [title for title, _ in panels] == ["acc", "acc_norm"]
    acc = panels[0][1]
    assert acc["a: synthetic_mc"] == pytest.approx([0.25, 0.35, 0.45]) and "chance (0.25)" in acc
    assert panels[1][1]["b: synthetic_mc"] == [0.3, 0.3, 0.3]


def test_summary_html_is_the_summary_table(inputs, tmp_path) -> None:
    from lmrepro.report.tables import write_html_table

    metrics_by_run, evals = inputs
    table = summary_table(load_evals(evals), load_metrics(metrics_by_run))
    page = write_html_table(table, tmp_path / "summary.html", "summary").read_text()
    assert "<th>synthetic_mc/acc_norm</th>" in page and page.count("<tr>") == 1 + 6
    assert "<td>4.25</td>" in page  # run a, step 10: the train loss of the second segment


def test_text_samples_page_lists_every_step_and_escapes(tmp_path) -> None:
    from lmrepro.report.tables import write_text_samples_html

    def sample(step: int) -> dict:
        return {"prompt": "the <owl>", "greedy": f"g{step}", "sampled": "x\x7f"}

    steps = [{"step": s, "tokens_seen": s * 10, "samples": [sample(s)]} for s in (0, 10)]
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps({"run": "r", "settings": {"seed": 0}, "prompts": ["the <owl>"], "steps": steps})
    )
    page = write_text_samples_html([path], tmp_path / "samples.html").read_text()
    assert "<h4>r</h4>" in page and page.count("the &lt;owl&gt;") == 2 and "g0" in page and "g10" in page
    assert "x\\x7f" in page and "\x7f" not in page
    assert "No run has text samples" in write_text_samples_html([], tmp_path / "none.html").read_text()
