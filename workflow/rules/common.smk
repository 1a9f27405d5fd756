# Named helpers for the rules: path builders, input functions and the run-config checks that must
# fail before any job runs. No lambdas in rules; logic lives in the lmrepro package.
import functools
import json
import re
import shlex
import subprocess
from pathlib import Path

from lmrepro.data.sources import local_input_paths
from lmrepro.workflow import (
    check_config,
    raw_dir,
    run_data_mode,
    run_datasets,
    segment_boundaries,
    train_shards_dir,
)


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    tokenizer=r"[A-Za-z0-9_.-]+",
    split=r"[A-Za-z0-9_-]+",
    run=r"[A-Za-z0-9_.-]+",
    step=r"\d+",
    task=r"[A-Za-z_][A-Za-z0-9_]*",
    base=r"[A-Za-z0-9_.-]+",


check_config(config)

# One software environment for every rule (`--software-deployment-method conda`); it mirrors pyproject.
LMREPRO_ENV = "../../envs/lmrepro.yaml"


def run_settings(run):
    return config["runs"][run]


def run_tokenizer_dir(wildcards):
    return f"results/tokenizers/{run_settings(wildcards.run)['tokenizer']}"


def eval_steps(run):
    """Checkpoints that are exported and evaluated: step 0 and every segment end."""
    settings = run_settings(run)
    return [0] + segment_boundaries(settings["steps"], settings["segment_steps"])


def tokenizer_train_raw(wildcards):
    return f"results/data/{config['tokenizers'][wildcards.tokenizer]['dataset']}/raw"


def run_train_data(wildcards):
    """Per training dataset (sorted by name): its train shards, or its raw folder in streaming mode."""
    settings = run_settings(wildcards.run)
    if run_data_mode(settings) == "streaming":
        return [raw_dir(name) for name in run_datasets(settings)]
    return [
        train_shards_dir(name, settings["tokenizer"]) for name in run_datasets(settings)
    ]


def render_settings(wildcards):
    """Everything of config.yaml that shapes this run's train.toml (a change reruns the run)."""
    return json.dumps(run_settings(wildcards.run), sort_keys=True)


def previous_checkpoint(wildcards):
    settings = run_settings(wildcards.run)
    boundaries = segment_boundaries(settings["steps"], settings["segment_steps"])
    step = int(wildcards.step)
    if step not in boundaries:
        raise ValueError(
            f"runs.{wildcards.run}: step {step} is not a segment end; valid steps: {boundaries}"
        )
    index = boundaries.index(step)
    previous = boundaries[index - 1] if index else 0
    return f"results/runs/{wildcards.run}/checkpoints/step-{previous}"


def segment_retries():
    """Retries of a failed segment (each resumes from state/): one. Zero in the Snakemake that runs a job
    inside a cluster job: the submitting Snakemake resubmits it (profiles/slurm: preemptible-retries),
    while a rule-level retry would rerun it in the same, nearly expired allocation
    (snakemake-executor-plugin-slurm issue #284).
    """
    return 0 if workflow.remote_exec else 1


def train_launcher(wildcards, threads, resources):
    """The one place that builds the training launch prefix (workflow/scripts/launch_train.py).

    Without an `mpi` resource (local runs, single-node jobs) the launcher runs `torchrun --standalone`
    with train_procs_per_node processes. With resources nodes=N, tasks=N, mpi="srun" (profiles/slurm),
    srun starts it once per node and each copy runs torchrun with c10d rendezvous on the first node.
    """
    nodes = resources.get("nodes", 1)
    launcher = (
        f"python workflow/scripts/launch_train.py --nnodes {nodes} "
        f"--nproc-per-node {resources.train_procs_per_node} --threads {threads} "
        f"--journal results/runs/{wildcards.run}/state/launch.log"
    )
    if resources.get("socket_ifname"):
        launcher += f" --socket-ifname {shlex.quote(resources.socket_ifname)}"
    check_warning_lead(resources)
    if resources.get("mpi"):
        check_partition_size(nodes, resources)
        launcher = f"{train_srun(nodes, threads, resources)} {launcher}"
    elif nodes != 1:
        raise ValueError(
            f"train_segment: nodes={nodes} needs mpi='srun' and tasks={nodes} (one task per node; "
            "without mpi the SLURM executor runs the job on one node): see profiles/slurm/config.yaml"
        )
    return f"{launcher} --"


def train_srun(nodes, threads, resources):
    """srun for a multi-node train job: one task per node, all of the job's CPUs, memory and GPUs."""
    tasks = resources.get("tasks")
    if tasks != nodes:
        raise ValueError(
            f"train_segment: nodes={nodes} but tasks={tasks}; one task per node needs tasks={nodes} "
            f"(e.g. --set-resources train_segment:nodes={nodes} train_segment:tasks={nodes} ...)"
        )
    gres = resources.get("gres", "")
    if gres and resources.get("tasks_per_gpu") != 0:
        raise ValueError(
            "train_segment: with gres set tasks_per_gpu=0, or the SLURM executor turns "
            "tasks into --ntasks-per-gpu"
        )
    srun = (
        f"{resources.mpi} --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 "
        f"--cpus-per-task={threads} --mem=0 --kill-on-bad-exit=1"
    )
    return f"{srun} --gres={gres}" if gres else srun


def check_warning_lead(resources):
    """The wall-time warning (slurm_extra --signal=SIG@seconds) must leave the job time to train: with a
    lead as long as the wall time, every attempt would stop after its first step."""
    warning = re.search(
        r"--signal[= ](?:[RB]:)?\w+@(\d+)", str(resources.get("slurm_extra", ""))
    )
    runtime = resources.get("runtime")
    if warning and isinstance(runtime, int) and int(warning.group(1)) >= 60 * runtime:
        raise ValueError(
            f"train_segment: the wall-time warning {warning.group(0)} comes {warning.group(1)} s before "
            f"the end of a runtime={runtime} min job, i.e. at its start; raise runtime or lower the lead"
        )


def check_partition_size(nodes, resources):
    """Before submission (SLURM executor): more nodes than the partition has or allows would leave the job
    pending forever (PartitionNodeLimit) on clusters without EnforcePartLimits. Stop with the numbers.
    """
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm" or resources.get("slurm_cluster"):
        return
    partitions = str(resources.get("slurm_partition", "")).split(",")
    limits = [slurm_partition_limit(name.strip()) for name in partitions]
    if limits[0] is not None and nodes > max(limit for _, limit in limits):
        sizes = ", ".join(f"{name}: {limit}" for name, limit in limits)
        raise ValueError(
            f"train_segment: nodes={nodes}, but partition {sizes} nodes at most; Slurm would keep the "
            "job pending. Ask for fewer nodes or another partition (resources nodes, tasks, slurm_partition)."
        )


@functools.cache
def slurm_partition_limit(name):
    """(partition, most nodes a job may use there) from scontrol; "" is the default partition; None
    where no Slurm client is installed."""
    try:
        show = subprocess.run(
            ["scontrol", "--oneliner", "show", "partition", *([name] if name else [])],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if show.returncode:
        raise ValueError(
            f"slurm_partition={name!r}: {show.stderr.strip() or show.stdout.strip()}"
        )
    for line in show.stdout.splitlines():
        fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
        if fields.get("PartitionName") == name or (
            not name and fields.get("Default") == "YES"
        ):
            total, most = int(fields["TotalNodes"]), fields["MaxNodes"]
            return fields["PartitionName"], (
                total if most == "UNLIMITED" else min(total, int(most))
            )
    raise ValueError(
        f"slurm_partition={name!r}: no such partition (and no default one)"
    )


def eval_spec(wildcards):
    return config["evals"][wildcards.task]


def loss_eval_shards(wildcards):
    spec = eval_spec(wildcards)
    tokenizer = run_settings(wildcards.run)["tokenizer"]
    return f"results/data/{spec['dataset']}/{tokenizer}/{spec['split']}"


def mc_eval_raw(wildcards):
    return f"results/data/{eval_spec(wildcards)['dataset']}/raw"


def mc_eval_file(wildcards):
    return eval_spec(wildcards)["file"]


def mc_eval_limit(wildcards):
    limit = eval_spec(wildcards).get("limit")
    return f"--limit {limit}" if limit else ""


def eval_max_tokens(wildcards):
    return eval_spec(wildcards).get("max_tokens", 32768)


def run_export_dtype(wildcards):
    return run_settings(wildcards.run).get("export_dtype", "float32")


def tasks_of_kind(kind):
    names = [
        name for name, spec in config.get("evals", {}).items() if spec["kind"] == kind
    ]
    return "|".join(names) if names else "(?!x)x"


def eval_outputs(run):
    return [
        f"results/runs/{run}/eval/step-{step}/{task}.json"
        for step in eval_steps(run)
        for task in run_settings(run).get("evals", [])
    ]


def all_eval_outputs(wildcards=None):
    return [path for run in config["runs"] for path in eval_outputs(run)]


def all_segment_checkpoints(wildcards=None):
    return [
        f"results/runs/{run}/checkpoints/step-{step}"
        for run in config["runs"]
        for step in eval_steps(run)[1:]
    ]


REPORT_PLOTS = ["loss", "learning_rate", "throughput", "eval_accuracy"]


def report_outputs():
    return ["results/report/summary.csv"] + [
        f"results/report/{name}.png" for name in REPORT_PLOTS
    ]


def dataset_spec(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)


def tokenizer_vocab_size(wildcards):
    return config["tokenizers"][wildcards.tokenizer]["vocab_size"]


def run_preset(wildcards):
    return run_settings(wildcards.run)["preset"]


def run_tokenizer_file(wildcards):
    return (
        f"results/tokenizers/{run_settings(wildcards.run)['tokenizer']}/tokenizer.json"
    )


def dataset_local_files(wildcards):
    """The files and folders a local dataset reads, so that editing them reruns prepare_dataset."""
    return local_input_paths(config["datasets"][wildcards.dataset])


def download_threads(wildcards):
    """Hub: parallel downloads and checksums; local: parallel checksums; synthetic: one."""
    source = config["datasets"][wildcards.dataset]["source"]
    return {"hub": 8, "local": 4}.get(source, 1)


def tokenize_threads(wildcards):
    """Encoding processes (capped by --cores); the small synthetic default stays one process."""
    return 1 if config["datasets"][wildcards.dataset]["source"] == "synthetic" else 8


def tokenizers_of_kind(*kinds):
    names = [
        name for name, spec in config["tokenizers"].items() if spec["kind"] in kinds
    ]
    return "|".join(re.escape(name) for name in names) if names else "(?!x)x"


def tokenizer_spec(wildcards):
    return json.dumps(config["tokenizers"][wildcards.tokenizer], sort_keys=True)


def tokenizer_source(wildcards):
    """The pretrained tokenizer's file or folder (kinds hf, tiktoken, sentencepiece)."""
    return config["tokenizers"][wildcards.tokenizer]["path"]


# Base checkpoints (convert.smk) and a run's step-0 from one (train.smk).


def base_source(wildcards):
    """The base checkpoint's folder (bases.<name>.path)."""
    return config["bases"][wildcards.base]["path"]


def base_format(wildcards):
    return config["bases"][wildcards.base]["format"]


def base_vocab(wildcards):
    return config["bases"][wildcards.base].get("vocab", "keep")


def run_init_base(wildcards):
    """The converted base a run starts from (runs.<run>.init); none means a seeded random init."""
    base = run_settings(wildcards.run).get("init")
    return [f"results/init/{base}/dcp"] if base else []


def init_base_arg(wildcards, input):
    return f"--base {input.base}" if input.base else ""
