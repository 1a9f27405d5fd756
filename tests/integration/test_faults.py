"""Faults survived: training SIGKILLed at many points (between steps, inside rolling and final saves) and
rerun ends bit-identical to an uninterrupted run; torchrun's in-job restart resumes a killed process."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_points import PHASES, SAVE_PHASES, order
from helpers import REPO
from trainer_processes import kill_tree, losses, setup_run, trainer_env, weights

pytestmark = pytest.mark.slow

STEPS, INTERVAL = 24, 4  # the reference fixture's run: rolling checkpoints at 4, 8, ..., 20; final at 24
FAULTS = Path(__file__).with_name("fault_points.py")


def run_bounded(cmd: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run to the end, or SIGKILL it and every process below it (forked attempts, torchrun's workers) after
    `timeout` seconds and fail: no hang outlives the test."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[1]} ran past {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def kill_points(seed: int = 18) -> list[tuple[int, str]]:
    """Ten distinct kill points in run order, drawn with a fixed seed: four between steps, four inside
    rolling saves, two inside the final save."""
    rng = random.Random(seed)
    rolling = range(INTERVAL, STEPS, INTERVAL)
    between = rng.sample([(s, "step") for s in range(1, STEPS)], 4)
    in_rolling = rng.sample([(s, f"rolling:{p}") for s in rolling for p in SAVE_PHASES], 4)
    in_final = rng.sample([(STEPS, f"final:{p}") for p in SAVE_PHASES], 2)
    return sorted(between + in_rolling + in_final, key=order)


def newest_complete_rolling(point: tuple[int, str]) -> int:
    """The rolling checkpoint a rerun must resume from after a kill at `point` (0: the segment's start)."""
    step, _ = point
    return max((s for s in range(INTERVAL, STEPS, INTERVAL) if s < step), default=0)


def resumed_from(log: str) -> int:
    if "resuming from rolling checkpoint" not in log:
        return 0
    return int(log.split("resuming from rolling checkpoint")[1].split("(step ")[1].split(")")[0])


def test_sigkill_at_ten_points_then_reruns_end_bit_identical(tmp_path, tiny_data, reference):
    points = kill_points()
    print("kill points:", points)
    assert len(set(points)) == 10 and {p for _, p in points} & {f"rolling:{s}" for s in SAVE_PHASES}
    assert all(phase in PHASES for _, phase in points)
    config, step0 = setup_run(tmp_path, tiny_data, "chain", training={"steps": STEPS})
    final = tmp_path / "chain" / "checkpoints" / f"step-{STEPS}"
    (tmp_path / "points.json").write_text(json.dumps(points))
    cmd = [sys.executable, str(FAULTS), "chain", str(tmp_path / "points.json"), str(tmp_path / "logs"), "--"]
    cmd += ["--config", str(config), "--resume-from", str(step0), "--save-to", str(final)]
    cmd += ["--until-step", str(STEPS)]
    out = run_bounded(cmd, trainer_env())
    assert out.returncode == 0, out.stdout + out.stderr
    attempts = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(attempts) == len(points) + 1, out.stdout
    expected_start = 0
    for attempt in attempts:
        log = Path(attempt["log"]).read_text()
        assert resumed_from(log) == expected_start, (attempt, log[-3000:])
        if attempt["point"] is None:
            assert attempt["exit"] == 0, log[-3000:]
        else:
            assert attempt["signal"] == 9, (attempt, log[-3000:])  # killed where it was meant to be
            expected_start = newest_complete_rolling(tuple(attempt["point"]))
    got, ref = losses(final), losses(reference)
    assert got == ref  # every step's loss, the killed attempts' rows merged, bitwise
    ref_w, got_w = weights(reference), weights(final)
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    assert not list((tmp_path / "chain").rglob("*.partial")), "a killed save left its partial folder"


def test_a_killed_process_restarts_inside_the_job_and_finishes(tmp_path, tiny_data, reference):
    """launch_train.py --max-restarts 1: the training process is SIGKILLed after step 10 once; torchrun
    restarts it in the same launch, it resumes from the rolling checkpoint of step 8 and ends like the
    uninterrupted run."""
    config, step0 = setup_run(tmp_path, tiny_data, "restart", training={"steps": STEPS})
    final = tmp_path / "restart" / "checkpoints" / f"step-{STEPS}"
    cmd = [sys.executable, str(REPO / "workflow/scripts/launch_train.py"), "--nproc-per-node", "1"]
    cmd += ["--threads", "1", "--max-restarts", "1", "--", str(FAULTS), "--config", str(config)]
    cmd += ["--resume-from", str(step0), "--save-to", str(final), "--until-step", str(STEPS)]
    env = {**trainer_env(), "LMREPRO_TEST_KILL_AT": "10:step"}
    env["LMREPRO_TEST_KILL_ONCE"] = str(tmp_path / "killed-once")
    out = run_bounded(cmd, env)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    assert (tmp_path / "killed-once").exists()  # the kill happened
    assert "torchrun --standalone; up to 1 in-job restarts" in log
    assert f"resuming from rolling checkpoint {tmp_path}/restart/state/checkpoints/step-8 (step 8)" in log
    ref_w, got_w = weights(reference), weights(final)
    assert all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own (resized by the test with `remount`), unmounted at the end."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if mount.returncode:
        pytest.skip(
            f"cannot mount a tmpfs for a real ENOSPC (needs root/CAP_SYS_ADMIN): {mount.stderr.strip()}"
        )
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True, timeout=60)


def used_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_full_disk_during_a_save_is_one_clear_error_and_keeps_the_previous_checkpoint(
    small_disk, tiny_data
):
    """The run folder on a tmpfs with room for step-0 and one rolling checkpoint and a half: the save of
    the second (step 8) hits ENOSPC. The trainer stops with one line naming the checkpoint, removes its
    partial folder and leaves the rolling checkpoint of step 4 complete and loadable."""
    config, step0 = setup_run(small_disk, tiny_data, "full", training={"steps": 12})
    model_bytes = used_bytes(step0)
    rolling_bytes = 3 * model_bytes  # weights and AdamW's two moments
    df = subprocess.run(
        ["df", "-B1", "--output=used", str(small_disk)], capture_output=True, text=True, timeout=60
    )
    size = int(df.stdout.split()[-1]) + int(1.5 * rolling_bytes)
    subprocess.run(["mount", "-o", f"remount,size={size}", str(small_disk)], check=True, timeout=60)
    final = small_disk / "full" / "checkpoints" / "step-12"
    cmd = [sys.executable, str(REPO / "workflow/scripts/train.py"), "--config", str(config)]
    cmd += ["--resume-from", str(step0), "--save-to", str(final), "--until-step", "12"]
    out = run_bounded(cmd, trainer_env())
    rolling = small_disk / "full" / "state" / "checkpoints"
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith(f"error: {rolling}/step-8: no space left on the device while writing it")
    assert errors[0].endswith("what was written before it is intact: free space and rerun"), errors
    assert "Traceback" not in out.stdout + out.stderr
    assert not final.exists() and not (rolling / "step-8").exists()
    assert not list(rolling.glob(".*.partial")), "the partial folder of the failed save still holds space"
    from lmrepro.checkpoint.dcp import is_complete, load_model

    assert is_complete(rolling / "step-4")
    model, info = load_model(rolling / "step-4")
    assert info["step"] == 4
