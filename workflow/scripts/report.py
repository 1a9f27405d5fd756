"""Plots (PNG + SVG), summary.csv/.html and text_samples.html from the segment checkpoints' metrics, the eval
JSONs and the runs' text samples."""

import argparse
import json
from pathlib import Path

from lmrepro.logs import run_main
from lmrepro.report.plots import write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--evals", nargs="*", default=[], help="eval JSONs (results/runs/*/eval/step-*/*.json)"
    )
    parser.add_argument(
        "--baselines", nargs="*", default=[], help="baseline JSONs (results/runs/*/baselines/*.json)"
    )
    parser.add_argument(
        "--checkpoints", nargs="*", default=[], help="segment checkpoints (hold metrics.jsonl)"
    )
    parser.add_argument(
        "--text-samples", nargs="*", default=[], help="text samples (results/runs/*/text_samples.json)"
    )
    parser.add_argument("--out", required=True, help="results/report")
    args = parser.parse_args()
    metrics_by_run: dict[str, list[Path]] = {}
    for checkpoint in map(Path, args.checkpoints):
        run = json.loads((checkpoint / "meta.json").read_text())["run"]
        metrics_by_run.setdefault(run, []).append(checkpoint / "metrics.jsonl")
    for name, path in sorted(
        write_report(
            metrics_by_run,
            [Path(p) for p in args.evals],
            Path(args.out),
            baseline_paths=[Path(p) for p in args.baselines],
            text_sample_paths=[Path(p) for p in args.text_samples],
        ).items()
    ):
        print(f"wrote {name}: {path}")


if __name__ == "__main__":
    run_main(main)
