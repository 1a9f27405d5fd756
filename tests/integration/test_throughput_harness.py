"""The GPU throughput harness runs end to end on CPU (debug shape, lmrepro side): its config, run, log
parsing and result file work before any device time is spent on them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput" / "bench.py"


def test_bench_cpu_smoke_runs_and_measures_async_checkpoints(tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, str(BENCH), "--cpu-smoke", "--out", str(out), "--steps", "12"]
    cmd += [
        "--work",
        str(tmp_path / "work"),
        "--scratch",
        str(tmp_path / "scratch"),
        "--variants",
        "ckpt_async",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"]["lmrepro-ckpt_async"]
    assert "error" not in run, run
    assert [r["step"] for r in run["rows"]] == [10, 12]
    saves = run["checkpoint_saves"]
    assert len(saves["async_staged_s"]) == 1 and saves["sync_s"] == []  # step 10, in the background
    assert len(saves["async_waited_s"]) == 1  # completed before the final save
    assert not (tmp_path / "scratch").exists()  # run folders and checkpoints cleaned up
