# Named helpers for the rules: path builders, input functions and the run-config checks that must
# fail before any job runs. No lambdas in rules; logic lives in the lmrepro package.
import json
from pathlib import Path

from lmrepro.workflow import check_config, segment_boundaries


wildcard_constraints:
    dataset=r"[A-Za-z0-9_.-]+",
    tokenizer=r"[A-Za-z0-9_.-]+",
    split=r"[A-Za-z0-9_-]+",
    run=r"[A-Za-z0-9_.-]+",
    step=r"\d+",
    task=r"[A-Za-z_][A-Za-z0-9_]*",


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


def run_train_shards(wildcards):
    settings = run_settings(wildcards.run)
    return f"results/data/{settings['dataset']}/{settings['tokenizer']}/train"


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


def train_launcher(wildcards, threads, resources):
    """The one place that builds the training launch prefix (local: torchrun --standalone)."""
    procs = resources.train_procs_per_node
    omp = max(1, threads // procs)
    return f"OMP_NUM_THREADS={omp} torchrun --standalone --nnodes 1 --nproc-per-node {procs}"


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
