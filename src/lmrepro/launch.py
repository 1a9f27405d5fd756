"""Start the training processes of one job on this node with torchrun, and pass the wall-time warning on.

One node (local runs, single-node jobs):

    python workflow/scripts/launch_train.py --nproc-per-node 2 --threads 4 -- workflow/scripts/train.py ...

runs `torchrun --standalone`. Several nodes: Slurm starts this launcher once per node in one job step
(`srun --nodes=N --ntasks=N --ntasks-per-node=1 ... launch_train.py --nnodes N ...`, built by
`lmrepro.slurm.launch_prefix`), and each copy runs torchrun with c10d rendezvous on the step's first node,
whose address comes from `scontrol show hostnames` and `scontrol show node ... NodeAddr`.

Signals. Slurm sends its wall-time warning (`sbatch --signal=URG@600`) to every process of every job step,
not to the batch script. SIGURG is ignored by default, so Snakemake, bash and torchrun carry on; the launcher
turns it (or SIGUSR1) into one SIGUSR1 for each training process, whose handler saves a rolling checkpoint
into state/ at the end of the step and exits non-zero, so that Snakemake resubmits the job and the retry
resumes. A warning that comes before the trainer handles SIGUSR1 is held until it does; torchrun runs with
SIGUSR1 ignored (it would die of it), and so do the training processes until the trainer's handler is in.
SIGTERM (time limit, scancel, Snakemake's shutdown) reaches every process directly; torchrun passes it on to
its workers and waits for them, so the launcher only waits. --journal keeps these messages across retries.

Environment: LMREPRO_RDZV_HOST / LMREPRO_RDZV_PORT override the rendezvous endpoint (default: the first
node's NodeAddr, port 20000 + job id % 10000); LMREPRO_RDZV_TIMEOUT_S bounds the rendezvous (default 600 s);
NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME pass through, or --socket-ifname sets both.

In-job restarts: --max-restarts N (resource train_max_restarts) lets torchrun restart the training processes
of every node up to N times after one of them fails (a crashed process, a lost GPU); each restart resumes
from the newest rolling checkpoint in state/. 0 (the default) leaves every failure to Snakemake's retry,
which resubmits the job.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from lmrepro.slurm import SlurmError, first_hostname, node_addr

WARNING_SIGNALS = (signal.SIGURG, signal.SIGUSR1)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SOCKET_VARIABLES = ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME")


JOURNAL: Path | None = None  # --journal: these messages also go there, kept across retries


def log(message: str) -> None:
    node = os.environ.get("SLURMD_NODENAME") or os.uname().nodename
    line = f"lmrepro launch [{node}]: {message}"
    print(line, file=sys.stderr, flush=True)
    if JOURNAL is not None:
        job = os.environ.get("SLURM_JOB_ID", "local")
        with contextlib.suppress(OSError), JOURNAL.open("a") as journal:
            journal.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} job {job} {line}\n")


class LaunchError(RuntimeError):
    """A launch that cannot work, explained (wrong geometry, no Slurm step, unresolvable head node)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--nnodes", type=int, default=1, help="nodes of the job (>1: a Slurm task per node)")
    parser.add_argument("--nproc-per-node", type=int, required=True, help="training processes per node")
    parser.add_argument("--threads", type=int, required=True, help="CPUs of this node for the job")
    parser.add_argument("--socket-ifname", default="", help="sets NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="torchrun restarts the training processes up to this many times after a failure (default 0)",
    )
    parser.add_argument(
        "--rdzv-timeout",
        type=int,
        default=int(os.environ.get("LMREPRO_RDZV_TIMEOUT_S", "600")),
        help="seconds to wait for all nodes to join (default: LMREPRO_RDZV_TIMEOUT_S or 600)",
    )
    parser.add_argument(
        "--journal",
        type=Path,
        help="also append these messages to this file (Snakemake deletes a job's log before a retry)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the torchrun command and exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py and its arguments")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the training script and its arguments after --")
    if min(args.nnodes, args.nproc_per_node, args.threads) < 1:
        parser.error("--nnodes, --nproc-per-node and --threads must be >= 1")
    if args.max_restarts < 0:
        parser.error("--max-restarts must be >= 0")
    return args


def slurm_step() -> dict[str, str]:
    """This task's place in its Slurm job step."""
    env = os.environ
    missing = [v for v in ("SLURM_JOB_ID", "SLURM_NODEID", "SLURM_STEP_NUM_NODES") if v not in env]
    if missing:
        raise LaunchError(
            f"--nnodes > 1 needs one launcher per node, started by srun in a Slurm job (missing {missing}); "
            "locally, train on one node (train_procs_per_node processes)"
        )
    return {
        "job_id": env["SLURM_JOB_ID"],
        "node_index": env["SLURM_NODEID"],
        "nodes": env["SLURM_STEP_NUM_NODES"],
        "tasks": env.get("SLURM_STEP_NUM_TASKS", ""),
        "nodelist": env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""),
    }


def rendezvous(nnodes: int, step: dict[str, str]) -> tuple[str, str]:
    """(host:port, where from) of the c10d rendezvous on the step's first node; one task per node or stop."""
    if int(step["nodes"]) != nnodes or step["tasks"] not in ("", str(nnodes)):
        raise LaunchError(
            f"--nnodes {nnodes}, but srun started {step['tasks'] or '?'} tasks on {step['nodes']} nodes: "
            "start exactly one task per node (srun --nodes=N --ntasks=N --ntasks-per-node=1)"
        )
    port = os.environ.get("LMREPRO_RDZV_PORT") or str(20000 + int(step["job_id"]) % 10000)
    if os.environ.get("LMREPRO_RDZV_HOST"):
        return f"{os.environ['LMREPRO_RDZV_HOST']}:{port}", "LMREPRO_RDZV_HOST"
    head = first_hostname(step["nodelist"])
    return f"{node_addr(head)}:{port}", f"head node {head}"


def torchrun_command(args: argparse.Namespace) -> tuple[list[str], str]:
    """The torchrun command line for this node and a one-line description of the layout."""
    torchrun = [sys.executable, "-m", "torch.distributed.run"]
    procs = args.nproc_per_node
    world = args.nnodes * procs
    restarts = ["--max-restarts", str(args.max_restarts)]
    in_job = f"; up to {args.max_restarts} in-job restarts" if args.max_restarts else ""
    if args.nnodes == 1:
        cmd = [*torchrun, "--standalone", "--nnodes", "1", "--nproc-per-node", str(procs), *restarts]
        summary = f"1 node × {procs} processes = world {world}; torchrun --standalone{in_job}"
        return [*cmd, *args.command], summary
    step = slurm_step()
    endpoint, origin = rendezvous(args.nnodes, step)
    timeout = args.rdzv_timeout
    cmd = [*torchrun, "--nnodes", str(args.nnodes), "--nproc-per-node", str(procs)]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", step["job_id"]]
    cmd += ["--rdzv-conf", f"join_timeout={timeout},read_timeout={timeout}", *restarts]
    summary = (
        f"{args.nnodes} nodes × {procs} processes = world {world}; node index {step['node_index']}; "
        f"c10d rendezvous at {endpoint} ({origin}, id {step['job_id']}, timeout {timeout} s){in_job}"
    )
    return [*cmd, *args.command], summary


def check_gpus(procs: int) -> None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    if visible and visible != "NoDevFiles" and len(visible.split(",")) < procs:
        raise LaunchError(
            f"{procs} processes per node but CUDA_VISIBLE_DEVICES={visible}: ask for as many GPUs per node "
            "(resource gres='gpu:N') as train_procs_per_node"
        )


def children(pid: int) -> list[int]:
    """Direct children of `pid` (torchrun's training processes), read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def catches_usr1(pid: int) -> bool:
    """Whether process `pid` has installed a SIGUSR1 handler (the trainer does, early in its setup)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
    return bool(int(caught, 16) >> (signal.SIGUSR1 - 1) & 1)


def ignore_usr1() -> None:
    """Runs in torchrun's process before exec: SIGUSR1 ignored, also in the workers it starts."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


class Launch:
    """torchrun as a child process, and the wall-time warning passed on to its training processes.

    A warning that arrives before the trainer has installed its SIGUSR1 handler (Slurm may send it while
    torchrun starts or a large checkpoint loads) is held and delivered once the handler is there.
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.warning: str | None = None  # name of the warning signal, once one arrived
        self.told: set[int] = set()  # training processes that got SIGUSR1
        for sig in WARNING_SIGNALS:
            signal.signal(sig, self.on_warning)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_stop)

    def on_warning(self, signum, frame) -> None:
        if self.warning is None:
            self.warning = signal.Signals(signum).name
            log(f"wall-time warning ({self.warning})")
        self.pass_warning_on()

    def pass_warning_on(self) -> None:
        if self.warning is None or self.proc is None:
            return
        ready = [pid for pid in children(self.proc.pid) if pid not in self.told and catches_usr1(pid)]
        for pid in ready:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR1)
            self.told.add(pid)
        if ready:
            log(f"SIGUSR1 to training processes {ready}: they save a rolling checkpoint and stop")

    def on_stop(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        log(f"{name}: torchrun stops the training processes (they checkpoint first); waiting for it")

    def run(self, cmd: list[str]) -> int:
        self.proc = subprocess.Popen(cmd, preexec_fn=ignore_usr1)
        while True:
            try:
                rc = self.proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                self.pass_warning_on()  # a held warning, once the trainer handles SIGUSR1
        rc = 128 - rc if rc < 0 else rc  # killed by a signal: report it the way a shell does
        if rc and self.told:
            log(f"torchrun exited {rc} after the wall-time warning; a retry resumes from state/")
        elif rc:
            log(f"torchrun exited {rc}")
        return rc


def main(argv: list[str] | None = None) -> int:
    global JOURNAL
    launch = Launch()  # first: a warning must not kill the launcher while it starts torchrun
    args = parse_args(argv)
    if args.journal and not args.dry_run:
        args.journal.parent.mkdir(parents=True, exist_ok=True)
        JOURNAL = args.journal
    try:
        cmd, summary = torchrun_command(args)
        check_gpus(args.nproc_per_node)
    except (LaunchError, SlurmError) as exc:
        log(f"error: {exc}")
        return 2
    os.environ["OMP_NUM_THREADS"] = str(max(1, args.threads // args.nproc_per_node))
    if args.socket_ifname:
        for variable in SOCKET_VARIABLES:
            os.environ[variable] = args.socket_ifname
    sockets = " ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in SOCKET_VARIABLES)
    log(f"{summary}; OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; {sockets}")
    log(shlex.join(["torchrun", *cmd[3:]]))
    if args.dry_run:
        return 0
    return launch.run(cmd)
