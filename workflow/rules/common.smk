# Named helpers for the rules (input functions, params) and the parse-time config check. Paths come from
# lmrepro.workflow, the launcher from lmrepro.slurm: logic lives in the package.
import json
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

from lmrepro.data.sources import local_input_paths
from lmrepro.run_layout import job_resources, run_layout, train_resources
from lmrepro.slurm import launch_prefix
from lmrepro.user_input import stop_on_user_error
from lmrepro.workflow import (
    baseline_result,
    base_dcp_dir,
    base_folder,
    base_input,
    check_config,
    checkpoint_dir,
    eval_result,
    eval_steps,
    init_run_step,
    launch_journal,
    names_of_kind,
    optimizer_dropped_steps,
    optimizer_needed_until,
    previous_segment_end,
    raw_dir,
    report_files,
    retention_record,
    run_data_mode,
    run_datasets,
    run_token_weights,
    segment_boundaries,
    shards_dir,
    text_samples_result,
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


def declared_train_layout():
    """What the profile or --set-resources declare for train_segment's train_procs_per_node and nodes
    (None where they leave them to the runs' layouts): they override a run's layout in its jobs.
    {"evaluated_by_job": True} when one is an expression only a job can evaluate (e.g. by attempt).
    """
    declared = workflow.resource_settings.overwrite_resources.get("train_segment", {})
    sizes = {key: declared.get(key) for key in ("train_procs_per_node", "nodes")}
    if any(size is not None and size.is_evaluable() for size in sizes.values()):
        return {"evaluated_by_job": True}
    sizes = {
        key: getattr(size, "value", None) for key, size in sizes.items()
    }  # snakemake Resources
    if not all(size is None or str(size).isdigit() for size in sizes.values()):
        return {"evaluated_by_job": True}
    return {key: None if size is None else int(size) for key, size in sizes.items()}


# Every run's trainer config rendered, its model and layout planned, its files looked at: a user error
# stops here in one line (lmrepro.user_input), before any job and before any output is rescheduled.
with stop_on_user_error():
    check_config(config, declared_train=declared_train_layout())

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


# Run keys that do not shape train.toml: what is sampled, evaluated, exported and kept of its checkpoints.
NOT_RENDERED = (
    "samples",
    "eval_every_segments",
    "eval_at_steps",
    "keep_optimizer_last_k",
)


def render_settings(wildcards):
    """Everything of config.yaml that shapes this run's train.toml (a change reruns the run); the keys of
    NOT_RENDERED only choose what happens to its checkpoints."""
    settings = {
        k: v for k, v in run_settings(wildcards.run).items() if k not in NOT_RENDERED
    }
    return json.dumps(settings, sort_keys=True)


def warn_of_replaced_results():
    """A run whose rendered trainer config changed while finished results exist: say which a rerun replaces
    (Snakemake removes each output before its job runs), on every invocation, `-n` included.
    """
    for run in config["runs"]:
        if not any(Path(checkpoint_dir(run, 0)).parent.glob("step-*")):
            continue  # nothing finished: nothing to lose (and no torch import while parsing)
        from lmrepro.run_config import replaced_results

        message = replaced_results(
            run, json.loads(render_settings(SimpleNamespace(run=run)))
        )
        if message:
            print(f"warning: {message}", file=sys.stderr)


warn_of_replaced_results()


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


def lm_eval_options(wildcards):
    """evals.<task> of kind lm_eval as eval_lm_eval.py's options (unset ones: the task's own defaults)."""
    spec = config["evals"][wildcards.task]
    options = {
        "--lm-eval-task": spec["task"],
        "--num-fewshot": spec.get("num_fewshot"),
        "--limit": spec.get("limit"),
        "--batch-size": spec.get("batch_size", 8),
        "--max-gen-toks": spec.get("max_gen_toks"),
    }
    return " ".join(
        f"{flag} {shlex.quote(str(value))}"
        for flag, value in options.items()
        if value is not None
    )


def run_evals(settings, *kinds):
    return [t for t in settings.get("evals", []) if config["evals"][t]["kind"] in kinds]


def all_eval_outputs(wildcards=None):
    return [
        eval_result(run, step, task)
        for run, settings in config["runs"].items()
        for step in eval_steps(settings)
        for task in run_evals(settings, "loss", "multiple_choice", "lm_eval")
    ]


def all_baseline_outputs(wildcards=None):
    """The n-gram baselines of every run (one per run and task, not per checkpoint)."""
    return [
        baseline_result(run, task)
        for run, settings in config["runs"].items()
        for task in run_evals(settings, "ngram")
    ]


def all_segment_checkpoints(wildcards=None):
    """Every segment's checkpoint (its metrics.jsonl is the report's training curve), evaluated or not."""
    return [
        checkpoint_dir(run, step)
        for run, settings in config["runs"].items()
        for step in segment_boundaries(settings["steps"], settings["segment_steps"])
    ]


def later_checkpoint(wildcards):
    """The checkpoint keep_optimizer_last_k segments on: once it exists, no segment resumes from this one."""
    settings = run_settings(wildcards.run)
    return checkpoint_dir(
        wildcards.run, optimizer_needed_until(settings, int(wildcards.step))
    )


def checkpoint_readers(wildcards):
    """The evals of this checkpoint's step (an export is read by them, so it is done before them)."""
    settings = run_settings(wildcards.run)
    if int(wildcards.step) not in eval_steps(settings):
        return []
    return [
        eval_result(wildcards.run, wildcards.step, task)
        for task in run_evals(settings, "loss", "multiple_choice", "lm_eval")
    ]


def all_retention_outputs(wildcards=None):
    """Every segment checkpoint but the last keep_optimizer_last_k of each run made model-only."""
    return [
        retention_record(run, step)
        for run, settings in config["runs"].items()
        for step in optimizer_dropped_steps(settings)
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
    """What a run starts from (runs.<run>.init): another run's segment checkpoint, a base's DCP
    conversion, or a `transformers` folder read in place by from_pretrained; none means a seeded random init.
    """
    chain = init_run_step(config["runs"], wildcards.run)
    if chain:
        return [checkpoint_dir(*chain)]
    base = run_settings(wildcards.run).get("init")
    if base and config["bases"][base]["format"] == "transformers":
        return [base_folder(base, config["bases"][base])]
    return [base_dcp_dir(base)] if base else []


def init_base_arg(wildcards, input):
    if not input.base:
        return ""
    chain = init_run_step(config["runs"], wildcards.run)
    return f"--{'from-run' if chain else 'base'} {shlex.quote(input.base[0])}"


def run_layout_of(wildcards):
    return run_layout(config["runs"][wildcards.run], wildcards.run)


def train_resource(name):
    """A train_segment resource from the run's layout (lmrepro.run_layout.train_resources)."""

    def of_run(wildcards):
        return train_resources(run_layout_of(wildcards))[name]

    return of_run


def train_threads(wildcards):
    return run_layout_of(wildcards).cpus_per_task


def site_default_resources():
    """The profile's default-resources mem_mb and runtime, where they are plain integers."""
    defaults = workflow.resource_settings.default_resources
    values = {
        key: getattr(defaults.get(key), "value", None) if defaults else None
        for key in ("mem_mb", "runtime")
    }
    return {key: value for key, value in values.items() if isinstance(value, int)}


def job_resource(job, name):
    """An eval (`job` "eval") or export job's resource from the run's layout (lmrepro.run_layout); memory
    and wall time the layout leaves out are the profile's default-resources."""

    def of_run(wildcards):
        size = getattr(run_layout_of(wildcards), job)
        return job_resources(size, site_default_resources())[name]

    return of_run


def run_weights(wildcards):
    """The run's token-weights file (training.token_weights), or nothing."""
    weights = run_token_weights(wildcards.run, run_settings(wildcards.run))
    return [weights] if weights else []


def token_weights_arg(wildcards, input):
    return f"--token-weights {shlex.quote(input.weights[0])}" if input.weights else ""


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
    return " ".join(
        f"{flag} {shlex.quote(str(spec[key]))}"
        for key, flag in flags.items()
        if key in spec
    )


def all_sample_outputs(wildcards=None):
    """Rasters of the last checkpoint of every run with `samples`."""
    return [
        f"results/report/samples/{run}-step-{settings['steps']}.png"
        for run, settings in config["runs"].items()
        if "samples" in settings
    ]


def text_sample_exports(wildcards):
    """The exports of every evaluated step of the run, which its text samples continue prompts with."""
    settings = run_settings(wildcards.run)
    return [
        f"results/runs/{wildcards.run}/export/step-{step}"
        for step in eval_steps(settings)
    ]


def text_samples_settings(wildcards):
    return shlex.quote(
        json.dumps(run_settings(wildcards.run)["text_samples"], sort_keys=True)
    )


def all_text_sample_outputs(wildcards=None):
    """The text samples of every run with `text_samples`."""
    return [
        text_samples_result(run)
        for run, settings in config["runs"].items()
        if "text_samples" in settings
    ]
