"""Helpers for tests that launch the real trainer with torchrun (gloo on CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import REPO, write_train_toml

TRAIN = REPO / "workflow" / "scripts" / "train.py"
INIT = REPO / "workflow" / "scripts" / "init_checkpoint.py"


def trainer_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "LMREPRO_PG_TIMEOUT_S": "120"}


def launch(config: Path, start: Path, save_to: Path, until: int, nproc: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]
    cmd += ["--nproc-per-node", str(nproc), str(TRAIN), "--config", str(config), "--resume-from", str(start)]
    cmd += ["--save-to", str(save_to), "--until-step", str(until)]
    return subprocess.Popen(
        cmd,
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def train(config: Path, start: Path, save_to: Path, until: int, nproc: int = 1) -> str:
    proc = launch(config, start, save_to, until, nproc)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def init_checkpoint(config: Path, step0: Path) -> None:
    cmd = [sys.executable, str(INIT), "--config", str(config), "--save-to", str(step0)]
    subprocess.run(cmd, check=True, env=trainer_env(), capture_output=True, timeout=120)


def losses(checkpoint: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from lmrepro.checkpoint.dcp import load_model

    model, _ = load_model(checkpoint)
    return {k: v.clone() for k, v in model.state_dict().items()}


def setup_run(tmp_path: Path, tiny_data, name: str, **sections) -> tuple[Path, Path]:
    """A run folder with train.toml and its step-0 seed checkpoint."""
    run_dir = tmp_path / name
    run_dir.mkdir()
    config = write_train_toml(run_dir / "train.toml", run_dir, tiny_data["train_index"], **sections)
    step0 = run_dir / "checkpoints" / "step-0"
    init_checkpoint(config, step0)
    return config, step0


def descendants(pid: int) -> list[int]:
    """All processes below pid (torchrun's workers may sit in their own process groups)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every worker at once, as a node failure or an OOM kill would."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for_checkpoint(path: Path, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path / "meta.json").is_file():
        assert proc.poll() is None, f"trainer exited before {path} appeared:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)
