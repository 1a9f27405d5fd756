# Named helpers for the rules (input functions, params) and the parse-time config check. Paths come from
# lmrepro.workflow, the launcher from lmrepro.slurm: logic lives in the package.
import json

from lmrepro.data.sources import local_input_paths
from lmrepro.slurm import launch_prefix
from lmrepro.workflow import (
    base_dcp_dir,
    check_config,
    checkpoint_dir,
    eval_result,
    eval_steps,
    launch_journal,
    names_of_kind,
    previous_segment_end,
    raw_dir,
    report_files,
    run_data_mode,
    run_datasets,
    shards_dir,
    tokenizer_file,
    train_shards_dir,
    with_validation,
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
    """The run's config.yaml entry, its in-loop validation resolved to a dataset split."""
    return with_validation(config["runs"][run], config.get("evals", {}))


def tokenizer_train_raw(wildcards):
    return raw_dir(config["tokenizers"][wildcards.tokenizer]["dataset"])


def run_train_data(wildcards):
    """Per training dataset: its train shards, or its raw folder in streaming mode (what the render reads)."""
    settings = run_settings(wildcards.run)
    if run_data_mode(settings) == "streaming":
        return [raw_dir(name) for name in run_datasets(settings)]
    return [
        train_shards_dir(name, settings["tokenizer"]) for name in run_datasets(settings)
    ]


def run_validation_data(wildcards):
    """The token shards that in-loop validation scores (none without runs.<run>.validation)."""
    settings = run_settings(wildcards.run)
    if "validation" not in settings:
        return []
    v = settings["validation"]
    return [shards_dir(v["dataset"], settings["tokenizer"], v["split"])]


def render_settings(wildcards):
    """Everything of config.yaml that shapes this run's train.toml (a change reruns the run)."""
    return json.dumps(run_settings(wildcards.run), sort_keys=True)


def previous_checkpoint(wildcards):
    run = wildcards.run
    previous = previous_segment_end(run, run_settings(run), int(wildcards.step))
    return checkpoint_dir(run, previous)


def segment_retries():
    """One retry of a failed segment (it resumes from state/), none inside a cluster job: the
    submitting Snakemake resubmits (profiles/slurm: preemptible-retries) rather than rerun it in the same,
    nearly expired allocation (snakemake-executor-plugin-slurm issue #284)."""
    return 0 if workflow.remote_exec else 1


def train_launcher(wildcards, threads, resources):
    """lmrepro.slurm.launch_prefix: torchrun on this node, or (`mpi` resource, profiles/slurm)
    srun once per node; its checks run at parse time, before any job is submitted."""
    return launch_prefix(
        threads=threads,
        resources=resources,
        journal=launch_journal(wildcards.run),
        executor=getattr(workflow.executor_plugin, "name", None),
    )


def loss_eval_shards(wildcards):
    spec = config["evals"][wildcards.task]
    tokenizer = run_settings(wildcards.run)["tokenizer"]
    return shards_dir(spec["dataset"], tokenizer, spec["split"])


def mc_eval_raw(wildcards):
    return raw_dir(config["evals"][wildcards.task]["dataset"])


def mc_eval_limit(wildcards):
    limit = config["evals"][wildcards.task].get("limit")
    return f"--limit {limit}" if limit else ""


def all_eval_outputs(wildcards=None):
    return [
        eval_result(run, step, task)
        for run, settings in config["runs"].items()
        for step in eval_steps(settings)
        for task in settings.get("evals", [])
    ]


def all_segment_checkpoints(wildcards=None):
    return [
        checkpoint_dir(run, step)
        for run, settings in config["runs"].items()
        for step in eval_steps(settings)[1:]
    ]


def dataset_spec(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)


def run_preset(wildcards):
    return run_settings(wildcards.run)["preset"]


def run_tokenizer_file(wildcards):
    return tokenizer_file(run_settings(wildcards.run)["tokenizer"])


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


def tokenizer_spec(wildcards):
    return json.dumps(config["tokenizers"][wildcards.tokenizer], sort_keys=True)


def run_init_base(wildcards):
    """The base a run starts from (runs.<run>.init): its DCP conversion, or a `transformers` folder read in
    place by from_pretrained; none means a seeded random init."""
    base = run_settings(wildcards.run).get("init")
    if base and config["bases"][base]["format"] == "transformers":
        return [config["bases"][base]["path"]]
    return [base_dcp_dir(base)] if base else []


def init_base_arg(wildcards, input):
    return f"--base {input.base}" if input.base else ""
