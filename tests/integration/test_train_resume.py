"""Training segments: a killed or signalled segment resumes from state/ and ends exactly where an
uninterrupted one does; FSDP on 2 gloo ranks reproduces the single-process losses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, write_train_toml

pytestmark = pytest.mark.slow

TRAIN = REPO / "workflow" / "scripts" / "train.py"
INIT = REPO / "workflow" / "scripts" / "init_checkpoint.py"


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LMREPRO_PG_TIMEOUT_S": "120"}


def _launch(config: Path, start: Path, save_to: Path, until: int, nproc: int = 1) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        str(TRAIN),
        "--config",
        str(config),
        "--resume-from",
        str(start),
        "--save-to",
        str(save_to),
        "--until-step",
        str(until),
    ]
    return subprocess.Popen(
        cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _train(config: Path, start: Path, save_to: Path, until: int, nproc: int = 1) -> str:
    proc = _launch(config, start, save_to, until, nproc)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def _init(config: Path, step0: Path) -> None:
    subprocess.run(
        [sys.executable, str(INIT), "--config", str(config), "--save-to", str(step0)],
        check=True,
        env=_env(),
        capture_output=True,
        timeout=120,
    )


def _losses(checkpoint: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from lmrepro.checkpoint.export import load_model

    model, _ = load_model(checkpoint)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _setup(tmp_path: Path, tiny_data, name: str, **sections) -> tuple[Path, Path]:
    run_dir = tmp_path / name
    run_dir.mkdir()
    config = write_train_toml(run_dir / "train.toml", run_dir, tiny_data["train_index"], **sections)
    step0 = run_dir / "checkpoints" / "step-0"
    _init(config, step0)
    return config, step0


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path / "meta.json").is_file():
        assert proc.poll() is None, f"trainer exited before {path} appeared:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data):
    """An uninterrupted 1-process segment 0 → 24 (the run has 24 steps)."""
    tmp = tmp_path_factory.mktemp("reference")
    config, step0 = _setup(tmp, tiny_data, "ref", training={"steps": 24})
    _train(config, step0, tmp / "ref" / "checkpoints" / "step-24", 24)
    return tmp / "ref" / "checkpoints" / "step-24"


def test_killed_segment_resumes_from_rolling_checkpoint(tmp_path, tiny_data, reference):
    config, step0 = _setup(tmp_path, tiny_data, "killed", training={"steps": 24})
    final = tmp_path / "killed" / "checkpoints" / "step-24"
    proc = _launch(config, step0, final, 24)
    _wait_for(tmp_path / "killed" / "state" / "checkpoints" / "step-8", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to save: only the rolling checkpoint survives
    proc.wait(timeout=30)
    assert not final.exists()

    out = _train(config, step0, final, 24)
    assert "resuming from rolling checkpoint" in out
    resumed_at = int(out.split("resuming from rolling checkpoint")[1].split("(step ")[1].split(")")[0])
    assert 8 <= resumed_at < 24
    assert _losses(final)[24] == _losses(reference)[24]  # bitwise: same layout, deterministic CPU
    assert set(_losses(final)) == set(range(1, 25))  # metrics of the killed attempt merged, no gaps
    ref_w, got_w = _weights(reference), _weights(final)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_sigterm_checkpoints_and_exits_for_retry(tmp_path, tiny_data, reference):
    config, step0 = _setup(
        tmp_path, tiny_data, "signalled", training={"steps": 24}, checkpoint={"interval_steps": 100}
    )
    final = tmp_path / "signalled" / "checkpoints" / "step-24"
    proc = _launch(config, step0, final, 24)
    metrics = tmp_path / "signalled" / "state" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # torchrun forwards it to the worker, as Slurm's warning would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    rolling = sorted((tmp_path / "signalled" / "state" / "checkpoints").glob("step-*"))
    assert len(rolling) == 1, out  # interval 100: this one was written because of the signal
    out = _train(config, step0, final, 24)
    assert f"resuming from rolling checkpoint {rolling[0]}" in out
    assert _losses(final)[24] == _losses(reference)[24]


def test_stale_rolling_checkpoint_of_an_edited_run_is_ignored(tmp_path, tiny_data):
    config, step0 = _setup(tmp_path, tiny_data, "edited", training={"steps": 8})
    proc = _launch(config, step0, tmp_path / "edited" / "unused", 8)
    _wait_for(tmp_path / "edited" / "state" / "checkpoints" / "step-4", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The user edits the learning rate: the workflow renders a new config and a new step-0.
    write_train_toml(
        config, tmp_path / "edited", tiny_data["train_index"], training={"steps": 8}, optimizer={"lr": 0.001}
    )
    import shutil

    shutil.rmtree(step0)
    _init(config, step0)
    out = _train(config, step0, tmp_path / "edited" / "checkpoints" / "step-8", 8)
    assert "resuming from rolling checkpoint" not in out
    assert "loaded " + str(step0) in out


def test_fsdp_two_ranks_match_single_process(tmp_path, tiny_data, reference):
    config, step0 = _setup(tmp_path, tiny_data, "fsdp", training={"steps": 24})
    final = tmp_path / "fsdp" / "checkpoints" / "step-12"
    out = _train(config, step0, final, 12, nproc=2)
    assert "dp_shard 2" in out
    ref, got = _losses(reference), _losses(final)
    for step in range(1, 13):
        assert got[step] == pytest.approx(ref[step], rel=1e-5), step
    # A checkpoint saved by 2 FSDP ranks continues in 1 process exactly like the 1-process run.
    cont = tmp_path / "fsdp" / "checkpoints" / "step-24"
    _train(config, final, cont, 24, nproc=1)
    got = _losses(cont)
    for step in range(13, 25):
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
