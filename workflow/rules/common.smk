# Named helpers for the rules (input functions, params) and the parse-time config check. Paths come from
# lmrepro.workflow, the launcher from lmrepro.slurm: logic lives in the package.
import json
import shlex

from lmrepro.data.sources import local_input_paths
from lmrepro.slurm import launch_prefix
from lmrepro.workflow import (
    baseline_result,
    base_dcp_dir,
    base_folder,
    base_input,
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
    run_token_weights,
    shards_dir,
    tokenizer_file,
    tokenizer_input,
    tokenizer_source,
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
    return with_validation(config["runs"][run], config.get("evals", {}), run)


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
    """Everything of config.yaml that shapes this run's train.toml (a change reruns the run); `samples`
    only shapes the samples of its last checkpoint."""
    settings = {k: v for k, v in run_settings(wildcards.run).items() if k != "samples"}
    return json.dumps(settings, sort_keys=True)


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


def ngram_train_shards(wildcards):
    """The run's training shards (every dataset of its mixture) that the n-gram counts."""
    settings = run_settings(wildcards.run)
    return [
        train_shards_dir(name, settings["tokenizer"]) for name in run_datasets(settings)
    ]


def mc_eval_raw(wildcards):
    return raw_dir(config["evals"][wildcards.task]["dataset"])


def mc_eval_limit(wildcards):
    limit = config["evals"][wildcards.task].get("limit")
    return f"--limit {limit}" if limit else ""


def run_evals(settings, *kinds):
    return [t for t in settings.get("evals", []) if config["evals"][t]["kind"] in kinds]


def all_eval_outputs(wildcards=None):
    return [
        eval_result(run, step, task)
        for run, settings in config["runs"].items()
        for step in eval_steps(settings)
        for task in run_evals(settings, "loss", "multiple_choice")
    ]


def all_baseline_outputs(wildcards=None):
    """The n-gram baselines of every run (one per run and task, not per checkpoint)."""
    return [
        baseline_result(run, task)
        for run, settings in config["runs"].items()
        for task in run_evals(settings, "ngram")
    ]


def all_segment_checkpoints(wildcards=None):
    return [
        checkpoint_dir(run, step)
        for run, settings in config["runs"].items()
        for step in eval_steps(settings)[1:]
    ]


def dataset_spec(wildcards):
    """What prepare_dataset reads (packing shapes the tokenize step only, so it reruns alone)."""
    spec = config["datasets"][wildcards.dataset]
    skip = ("packing", "separator_token")
    return json.dumps({k: v for k, v in spec.items() if k not in skip}, sort_keys=True)


def run_preset(wildcards):
    return run_settings(wildcards.run)["preset"]


def named_tokenizer_file(name):
    return tokenizer_file(name, config["tokenizers"][name]["kind"])


def run_tokenizer_file(wildcards):
    return named_tokenizer_file(run_settings(wildcards.run)["tokenizer"])


def tokenizer_anchor(wildcards):
    return named_tokenizer_file(wildcards.tokenizer)


def patch_tokenizer_source(wildcards):
    """The dataset's prepared raw folder it is built from, or the folder it is imported from (`path`)."""
    spec = config["tokenizers"][wildcards.tokenizer]
    return spec["path"] if "path" in spec else raw_dir(spec["dataset"])


def patch_tokenizer_mode(wildcards):
    return (
        "--import" if "path" in config["tokenizers"][wildcards.tokenizer] else "--raw"
    )


def patch_size_args(wildcards):
    return " ".join(str(p) for p in config["tokenizers"][wildcards.tokenizer]["patch"])


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


def packing_args(wildcards):
    """The dataset's packing (datasets.<name>.packing, separator_token) as tokenize_split.py flags."""
    spec = config["datasets"][wildcards.dataset]
    flags = f"--packing {spec.get('packing', 'bos_eos')}"
    if "separator_token" in spec:
        flags += f" --separator-token {shlex.quote(spec['separator_token'])}"
    return flags


def tokenizer_spec(wildcards):
    """The tokenizer's entry, its `path` resolved to its files (inside the fetched snapshot for a Hub one)."""
    name = wildcards.tokenizer
    spec = config["tokenizers"][name]
    return json.dumps({**spec, "path": tokenizer_source(name, spec)}, sort_keys=True)


def pretrained_tokenizer_input(wildcards):
    name = wildcards.tokenizer
    return tokenizer_input(name, config["tokenizers"][name])


def hub_spec(wildcards):
    return json.dumps(config[wildcards.section][wildcards.name], sort_keys=True)


def base_spec(wildcards):
    return json.dumps(config["bases"][wildcards.base], sort_keys=True)


def base_source(wildcards):
    """What the conversion depends on: the base's folder, its stand-in or its fetched Hub folder."""
    return base_input(wildcards.base, config["bases"][wildcards.base])


def base_source_folder(wildcards):
    return base_folder(wildcards.base, config["bases"][wildcards.base])


def run_init_base(wildcards):
    """The base a run starts from (runs.<run>.init): its DCP conversion, or a `transformers` folder read in
    place by from_pretrained; none means a seeded random init."""
    base = run_settings(wildcards.run).get("init")
    if base and config["bases"][base]["format"] == "transformers":
        return [base_folder(base, config["bases"][base])]
    return [base_dcp_dir(base)] if base else []


def init_base_arg(wildcards, input):
    return f"--base {input.base}" if input.base else ""


def run_weights(wildcards):
    """The run's token-weights file (training.token_weights), or nothing."""
    weights = run_token_weights(wildcards.run, run_settings(wildcards.run))
    return [weights] if weights else []


def token_weights_arg(wildcards, input):
    return f"--token-weights {input.weights}" if input.weights else ""


def run_samples_raw(wildcards):
    """The raw folder of the run's (single) training dataset, whose split the samples are prompted from."""
    return raw_dir(run_settings(wildcards.run)["dataset"])


def samples_args(wildcards):
    spec = run_settings(wildcards.run)["samples"]
    flags = {
        "split": "--split",
        "num_rows": "--num-rows",
        "prompt_bins": "--prompt-bins",
    }
    flags |= {"gen_bins": "--gen-bins", "seed": "--seed"}
    return " ".join(f"{flag} {spec[key]}" for key, flag in flags.items() if key in spec)


def all_sample_outputs(wildcards=None):
    """Rasters of the last checkpoint of every run with `samples`."""
    return [
        f"results/report/samples/{run}-step-{settings['steps']}.png"
        for run, settings in config["runs"].items()
        if "samples" in settings
    ]
