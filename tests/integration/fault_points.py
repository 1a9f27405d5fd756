"""Kill the trainer at a chosen point of its run, from outside the package (no test branch in the trainer).

A kill point is (step, phase): right after training step `step` (phase ``step``), or inside the save of
the checkpoint of that step, rolling (state/checkpoints/step-K) or final (the segment's --save-to):

    <kind>:start     the checkpoint's .partial folder exists, nothing written into it yet
    <kind>:data      every rank's .distcp files written, DCP's .metadata not yet
    <kind>:metadata  DCP is done (data + .metadata), our meta.json not yet
    <kind>:rename    meta.json written, the .partial folder about to be renamed into place

`install(step, phase)` patches the public seams these happen at (`Trainer.train_step`,
`torch.distributed.checkpoint.save`, `FileSystemWriter.finish`, `os.replace`) so that the process
SIGKILLs itself there, as a node failure or an OOM kill would end it.

Run as a script it is a stand-in for workflow/scripts/train.py (e.g. the script torchrun starts):

    LMREPRO_TEST_KILL_AT=12:step [LMREPRO_TEST_KILL_ONCE=marker] python fault_points.py <train.py args>

With LMREPRO_TEST_KILL_ONCE the kill happens only if the marker file does not exist yet (it is created
just before the kill), so a restarted process runs through.

`python fault_points.py chain POINTS.json LOGS -- <train.py args>` runs one attempt per kill point and a
last one without, one after the other as a retried job would; each attempt is a fresh process forked from
this one after the imports (a second of start-up instead of several), and its output goes to
LOGS/attempt-<i>.log. It prints one JSON line per attempt: the point and how the attempt ended.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "workflow" / "scripts" / "train.py"
KINDS = ("rolling", "final")
SAVE_PHASES = ("start", "data", "metadata", "rename")
PHASES = ("step", *(f"{kind}:{phase}" for kind in KINDS for phase in SAVE_PHASES))


def order(point: tuple[int, str]) -> tuple[int, int]:
    """The position of a kill point in a run's sequence of events."""
    step, phase = point
    return step, PHASES.index(phase)


def die(once: str | None = None) -> None:
    if once:
        if Path(once).exists():
            return
        Path(once).touch()
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _is_target(path, step: int, kind: str) -> bool:
    """Whether `path` is the .partial folder of the step-`step` checkpoint of this kind."""
    path = Path(str(path))
    rolling = path.parent.name == "checkpoints" and path.parent.parent.name == "state"
    return path.name == f".step-{step}.partial" and rolling == (kind == "rolling")


def install(step: int, phase: str, once: str | None = None) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    from lmrepro.train.trainer import Trainer

    if phase not in PHASES:
        raise ValueError(f"kill phase {phase!r}; valid: {', '.join(PHASES)}")
    if phase == "step":
        train_step = Trainer.train_step

        def train_step_then_die(self):
            out = train_step(self)
            if self.step == step:
                die(once)
            return out

        Trainer.train_step = train_step_then_die
        return
    kind, when = phase.split(":")
    save, finish, replace = dcp.save, FileSystemWriter.finish, os.replace

    def dcp_save(state, *args, checkpoint_id=None, **kwargs):
        if when == "start" and _is_target(checkpoint_id, step, kind):
            die(once)
        result = save(state, *args, checkpoint_id=checkpoint_id, **kwargs)
        if when == "metadata" and _is_target(checkpoint_id, step, kind):
            die(once)
        return result

    def writer_finish(self, *args, **kwargs):
        if when == "data" and _is_target(self.path, step, kind):
            die(once)
        return finish(self, *args, **kwargs)

    def os_replace(src, dst, *args, **kwargs):
        if when == "rename" and _is_target(src, step, kind):
            die(once)
        return replace(src, dst, *args, **kwargs)

    dcp.save, FileSystemWriter.finish, os.replace = dcp_save, writer_finish, os_replace


def run_train(argv: list[str]) -> None:
    """workflow/scripts/train.py with these arguments, in this process (exits like it)."""
    sys.argv = [str(TRAIN), *argv]
    runpy.run_path(str(TRAIN), run_name="__main__")


def attempt(point: tuple[int, str] | None, log: Path, argv: list[str]) -> dict:
    """One training attempt in a forked child, killed at `point` (None: run to the end)."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            if point is not None:
                install(*point)
            run_train(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    signalled = os.WIFSIGNALED(status)
    return {
        "point": point,
        "signal": os.WTERMSIG(status) if signalled else None,
        "exit": None if signalled else os.WEXITSTATUS(status),
        "log": str(log),
    }


def chain(points: list[tuple[int, str]], logs: Path, argv: list[str]) -> None:
    import json

    import lmrepro.train.trainer  # noqa: F401 - imported once, before the forks

    logs.mkdir(parents=True, exist_ok=True)
    for i, point in enumerate([*points, None]):
        print(json.dumps(attempt(point, logs / f"attempt-{i}.log", argv)), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["chain"]:
        import json

        points = [tuple(p) for p in json.loads(Path(sys.argv[2]).read_text())]
        assert sys.argv[4] == "--", sys.argv
        chain(points, Path(sys.argv[3]), sys.argv[5:])
    else:
        step, phase = os.environ["LMREPRO_TEST_KILL_AT"].split(":", 1)
        install(int(step), phase, os.environ.get("LMREPRO_TEST_KILL_ONCE"))
        run_train(sys.argv[1:])
