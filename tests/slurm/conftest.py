"""A private two-node Slurm cluster on this host for the tests in tests/slurm/ (see cluster.sh).

The session fixture brings it up with accounting (MariaDB + slurmdbd), so that the SLURM executor's default
status command (sacct) is the one exercised, and tears it down at the end, stopping only the daemons whose
pids its own state dir recorded. Without root or Debian's Slurm packages the tests skip with the reason;
with CI=true (where .ci/run installs the packages) a skipped slurm test counts as a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

CLUSTER_SH = Path(__file__).with_name("cluster.sh")
NEEDED = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "munged", "slurmdbd", "sacct", "mariadbd")
PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI the Slurm tests are mandatory: a skip (no root, no Slurm, ...) is reported as a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and item.get_closest_marker("slurm") is not None:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"CI=true: Slurm tests must run, but this one skipped: {reason}"


@dataclass(frozen=True)
class Cluster:
    state: Path  # SLURM_TEST_DIR: configs, logs, spool, database

    def logs(self) -> str:
        """The daemons' logs, for failure messages."""
        return "\n".join(
            f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((self.state / "log").glob("*.log"))
        )


def cluster_sh(state: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLURM_TEST_DIR": str(state), "SLURM_TEST_ACCOUNTING": "1"}
    return subprocess.run(
        ["bash", str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests start slurmctld/slurmd/munged/slurmdbd and need root")
    missing = [name for name in NEEDED if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}): apt-get install {PACKAGES}")
    state = Path(tempfile.mkdtemp(prefix="lmrepro-slurm-"))
    up = cluster_sh(state, "up")
    if up.returncode:
        logs = Cluster(state).logs()
        down = cluster_sh(state, "down", "--purge")
        pytest.fail(f"cluster.sh up failed ({up.returncode}):\n{up.stderr}\n{logs}\n{down.stderr}")
    yield Cluster(state)
    down = cluster_sh(state, "down", "--purge")
    assert down.returncode == 0, down.stderr
