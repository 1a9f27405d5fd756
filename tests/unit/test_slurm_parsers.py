"""lmrepro.slurm without a cluster: scontrol parsers on captured output, the launch prefix, its checks."""

from __future__ import annotations

import pytest

from lmrepro import slurm

# `scontrol --oneliner show partition` of a cluster with two partitions (Slurm 23.11, trimmed fields kept
# in their order).
PARTITIONS = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES "
    "QoS=N/A DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=UNLIMITED MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=c[1-2] PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=8 TotalNodes=2 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=8,mem=15000M,node=2,billing=8\n"
    "PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE MaxNodes=4 MaxTime=2-00:00:00 MinNodes=0 Nodes=g[01-16] State=UP TotalCPUs=1536 "
    "TotalNodes=16 TRES=cpu=1536,mem=32000G,node=16,gres/gpu=128\n"
)

# `scontrol show node --oneliner g03` (NodeAddr differs from the name, as on clusters with a fabric name).
NODE = (
    "NodeName=g03 Arch=x86_64 CoresPerSocket=48 CPUAlloc=0 CPUEfctv=96 CPUTot=96 CPULoad=0.01 "
    "AvailableFeatures=h100 ActiveFeatures=h100 Gres=gpu:8 NodeAddr=g03-ib0 NodeHostName=g03 "
    "Version=23.11.4 OS=Linux 5.14.0 RealMemory=2000000 AllocMem=0 FreeMem=1900000 Sockets=2 Boards=1 "
    "State=IDLE ThreadsPerCore=1 TmpDisk=0 Weight=1 Owner=N/A MCS_label=N/A Partitions=gpu \n"
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("debug", ("debug", 2)), ("gpu", ("gpu", 4)), ("", ("debug", 2))],
    ids=["unlimited-max", "max-below-total", "default-partition"],
)
def test_parse_partition_limit(name: str, expected: tuple[str, int]) -> None:
    assert slurm.parse_partition_limit(PARTITIONS, name) == expected


def test_parse_partition_limit_unknown_or_no_default() -> None:
    with pytest.raises(ValueError, match="slurm_partition='big': no such partition"):
        slurm.parse_partition_limit(PARTITIONS, "big")
    without_default = PARTITIONS.replace("Default=YES", "Default=NO")
    with pytest.raises(ValueError, match="no default one"):
        slurm.parse_partition_limit(without_default, "")


def test_parse_node_addr() -> None:
    assert slurm.parse_node_addr(NODE, "g03") == "g03-ib0"
    with pytest.raises(slurm.SlurmError, match="g03: no NodeAddr"):
        slurm.parse_node_addr(NODE.replace("NodeAddr=g03-ib0 ", ""), "g03")


def test_parse_first_hostname() -> None:
    assert slurm.parse_first_hostname("g03\ng04\ng05\n", "g[03-05]") == "g03"
    with pytest.raises(slurm.SlurmError, match="no hostname"):
        slurm.parse_first_hostname("", "g[03-05]")


def test_scontrol_missing_is_a_slurm_error(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(slurm.SlurmError, match="scontrol show hostnames x failed"):
        slurm.first_hostname("x")
    slurm.partition_limit.cache_clear()
    assert slurm.partition_limit("gpu") is None  # no Slurm client: the size check is skipped
    slurm.partition_limit.cache_clear()


LOCAL = {"train_procs_per_node": 2}
MULTI = {
    "train_procs_per_node": 4,
    "nodes": 2,
    "tasks": 2,
    "mpi": "srun",
    "gres": "gpu:4",
    "tasks_per_gpu": 0,
}


def test_launch_prefix_local() -> None:
    prefix = slurm.launch_prefix(threads=4, resources=LOCAL, journal="results/runs/r/state/launch.log")
    assert prefix == (
        "python workflow/scripts/launch_train.py --nnodes 1 --nproc-per-node 2 --threads 4 "
        "--journal results/runs/r/state/launch.log --"
    )


def test_launch_prefix_multi_node_checks_the_partition(monkeypatch) -> None:
    seen = []

    def limit(name):
        seen.append(name)
        return ("gpu", 4)

    monkeypatch.setattr(slurm, "partition_limit", limit)
    resources = {**MULTI, "socket_ifname": "ib0", "slurm_partition": "gpu"}
    prefix = slurm.launch_prefix(threads=8, resources=resources, journal="j", executor="slurm")
    slurm.launch_prefix(
        threads=8, resources={**resources, "slurm_cluster": "other"}, journal="j", executor="slurm"
    )
    slurm.launch_prefix(threads=8, resources=resources, journal="j")  # local executor: no check
    assert prefix.startswith(
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=8 --mem=0 --kill-on-bad-exit=1 "
        "--gres=gpu:4 python workflow/scripts/launch_train.py --nnodes 2 --nproc-per-node 4"
    )
    assert prefix.endswith("--journal j --socket-ifname ib0 --")
    slurm.check_partition_size(4, "gpu", limit=limit)
    with pytest.raises(ValueError, match="nodes=5, but partition gpu: 4 nodes at most"):
        slurm.check_partition_size(5, "gpu", limit=limit)
    slurm.check_partition_size(5, "gpu", limit=lambda name: None)  # no Slurm client
    with pytest.raises(ValueError, match="nodes=5"):
        slurm.launch_prefix(
            threads=8, resources={**resources, "nodes": 5, "tasks": 5}, journal="j", executor="slurm"
        )
    assert seen == ["gpu", "gpu", "gpu", "gpu"]


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({**LOCAL, "nodes": 2}, "nodes=2 needs mpi='srun'"),
        ({**MULTI, "tasks": 8}, "nodes=2 but tasks=8"),
        ({**MULTI, "tasks_per_gpu": 1}, "tasks_per_gpu=0"),
        ({**LOCAL, "runtime": 10, "slurm_extra": "--signal=B:URG@600"}, "URG@600 comes 600 s before"),
    ],
    ids=["nodes-without-mpi", "tasks-not-nodes", "gres-without-tasks-per-gpu", "warning-lead"],
)
def test_launch_prefix_refuses(resources: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        slurm.launch_prefix(threads=2, resources=resources, journal="j")


def test_warning_lead_shorter_than_runtime_passes() -> None:
    slurm.check_warning_lead({"runtime": 11, "slurm_extra": "--signal=URG@600"})


def test_launch_prefix_passes_in_job_restarts_on() -> None:
    prefix = slurm.launch_prefix(threads=4, resources={**LOCAL, "train_max_restarts": 2}, journal="j")
    assert prefix.endswith("--journal j --max-restarts 2 --")
    assert "--max-restarts" not in slurm.launch_prefix(
        threads=4, resources={**LOCAL, "train_max_restarts": 0}, journal="j"
    )
    for bad in (-1, "two", True):
        with pytest.raises(ValueError, match=r"train_max_restarts=.*; give an integer >= 0"):
            slurm.launch_prefix(threads=4, resources={**LOCAL, "train_max_restarts": bad}, journal="j")


def test_torchrun_command_carries_max_restarts(monkeypatch) -> None:
    from lmrepro import launch

    script = ["--", "train.py", "--config", "a b/train.toml"]
    cmd, summary = launch.torchrun_command(
        launch.parse_args(["--nproc-per-node", "2", "--threads", "2", *script])
    )
    assert cmd[3:] == [
        "--standalone", "--nnodes", "1", "--nproc-per-node", "2", "--max-restarts", "0",
        "train.py", "--config", "a b/train.toml",
    ]  # fmt: skip
    assert "restarts" not in summary
    step = {"SLURM_JOB_ID": "7", "SLURM_NODEID": "0", "SLURM_STEP_NUM_NODES": "2", "LMREPRO_RDZV_HOST": "h"}
    for name, value in step.items():
        monkeypatch.setenv(name, value)
    args = launch.parse_args(
        ["--nnodes", "2", "--nproc-per-node", "4", "--threads", "8", "--max-restarts", "3", *script]
    )
    cmd, summary = launch.torchrun_command(args)
    assert cmd[cmd.index("--max-restarts") + 1] == "3" and cmd.count("--max-restarts") == 1
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "h:20007"
    assert summary.endswith("; up to 3 in-job restarts")
    with pytest.raises(SystemExit):
        launch.parse_args(["--nproc-per-node", "1", "--threads", "1", "--max-restarts", "-1", *script])
