"""Bad input stops the workflow before any job runs, with a first line naming the key or file (and what
would be valid), no traceback, and nothing under results/ changed: each case edits a copy of ONE finished
tiny run of the embedded default into a mistake and runs `snakemake --cores 1 all` on it.

Most mistakes that check_config alone decides are asserted in-process, which is cheaper
(tests/unit/test_workflow_checks.py, tests/unit/test_user_input.py); these go through the real command line:
one of each kind, and every check that lives in the Snakefile (config files, command line, profile)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import copy_workflow

pytestmark = pytest.mark.slow

CONFIG = Path("config") / "config.yaml"


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """The embedded default cut to the bone (a 1-layer debug model, 4 steps in 2 segments, the held-out
    loss only), run to the end once; each case edits a copy."""
    workdir = copy_workflow(tmp_path_factory.mktemp("finished"))
    config = yaml.safe_load((workdir / CONFIG).read_text())
    config["datasets"]["synthetic"].update(
        num_train_documents=300, num_heldout_documents=30, num_mc_examples=8
    )
    config["tokenizers"]["synthetic-bpe"]["vocab_size"] = 300
    config["evals"]["heldout"]["max_tokens"] = 512
    run = config["runs"]["tiny"]
    run.update(steps=4, segment_steps=2, evals=["heldout"])
    run["overrides"].update(
        model={"overrides": {"n_layers": 1, "dim": 32, "n_heads": 2, "n_kv_heads": 1, "ffn_dim": 64}},
        data={"seq_len": 32},
        schedule={"warmup_steps": 1},
        metrics={"log_every_steps": 1, "tensorboard": False},
    )
    run["overrides"]["training"]["global_batch_tokens"] = 256  # 8 sequences of 32 tokens
    (workdir / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    result = _snakemake(workdir, "--cores", "2", "all")
    assert result.returncode == 0, result.stderr[-5000:]
    assert (workdir / "results" / "runs" / "tiny" / "checkpoints" / "step-4").is_dir()
    return workdir


def results_sha256(workdir: Path) -> dict[str, str]:
    """sha256 of every file under results/ (and every folder, as an empty entry)."""
    digests = {}
    for path in sorted((workdir / "results").rglob("*")):
        key = str(path.relative_to(workdir))
        digests[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
    return digests


# --------------------------------------------------------------------------------------------- edits


def config_edit(change: Callable[[dict], object]) -> Callable[[Path], None]:
    """An edit of config/config.yaml as data (loaded, changed, dumped)."""

    def edit(workdir: Path) -> None:
        config = yaml.safe_load((workdir / CONFIG).read_text())
        change(config)
        (workdir / CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))

    return edit


def text_edit(change: Callable[[str], str]) -> Callable[[Path], None]:
    """An edit of config/config.yaml as text (what YAML parsing would hide: duplicates, syntax)."""

    def edit(workdir: Path) -> None:
        (workdir / CONFIG).write_text(change((workdir / CONFIG).read_text()))

    return edit


def tiny(config: dict) -> dict:
    return config["runs"]["tiny"]


def override(section: str, **values) -> Callable[[dict], None]:
    return lambda c: tiny(c)["overrides"].setdefault(section, {}).update(values)


def model_override(**values) -> Callable[[dict], None]:
    return lambda c: tiny(c)["overrides"]["model"]["overrides"].update(values)


def copied_run_block(text: str) -> str:
    """The run block pasted a second time under runs: (the same name twice)."""
    start = text.index("  tiny:\n")
    return text + text[start:]


def local_dataset(file_name: str, content: bytes) -> Callable[[Path], None]:
    """A local dataset whose one train file is `content` (checked although no run trains on it yet)."""

    def edit(workdir: Path) -> None:
        (workdir / "data").mkdir(exist_ok=True)
        (workdir / "data" / file_name).write_bytes(content)
        config_edit(
            lambda c: c["datasets"].update(mine={"source": "local", "files": {"train": f"data/{file_name}"}})
        )(workdir)

    return edit


def a_profile(processes: int) -> Callable[[Path], None]:
    def edit(workdir: Path) -> None:
        profile = workdir / "profiles" / "big"
        profile.mkdir(parents=True)
        resources = {"set-resources": {"train_segment": {"train_procs_per_node": processes}}}
        (profile / "config.yaml").write_text(yaml.safe_dump({"cores": 1, **resources}))

    return edit


def no_edit(workdir: Path) -> None:
    """Command-line slips: the files stay as they are."""


def experiment_with_duplicate_dataset(workdir: Path) -> None:
    """An experiment file (--configfile) whose datasets: block was pasted twice."""
    text = (workdir / CONFIG).read_text()
    block = text[: text.index("tokenizers:")]
    (workdir / "config" / "experiments" / "dup.yaml").write_text(text + block)


# Each case: (edit, substrings of the first line of the error output, snakemake arguments).
ALL = ("--cores", "1", "all")
CASES: dict[str, tuple[Callable[[Path], None], list[str], tuple[str, ...]]] = {
    # config keys and values (the JSON schema, key path first)
    "typo in a run key": (
        config_edit(lambda c: tiny(c).update(segmnet_steps=5)),
        ["runs.tiny: unknown key segmnet_steps", "'segment_steps'"],
        ALL,
    ),
    "wrongly typed value": (
        config_edit(lambda c: tiny(c).update(steps="200")),
        ["runs.tiny.steps: '200' is not of type 'integer'"],
        ALL,
    ),
    "a run named ..": (
        config_edit(lambda c: c["runs"].update({"..": tiny(c)})),
        ["runs: name '..' is not allowed"],
        ALL,
    ),
    "a copied run block (duplicate key)": (
        text_edit(copied_run_block),
        ["config/config.yaml:", "duplicate key runs.tiny (first at line"],
        ALL,
    ),
    "a YAML syntax error": (
        text_edit(lambda t: t.replace("steps: 4", "steps: [4")),
        ["config/config.yaml:", "YAML syntax error"],
        ALL,
    ),
    # trainer overrides
    "warmup longer than the run": (
        config_edit(override("schedule", warmup_steps=10)),
        ["runs.tiny: schedule.warmup_steps = 10 exceeds runs.tiny.steps = 4"],
        ALL,
    ),
    # model shape
    "a typo inside model.overrides": (
        config_edit(model_override(n_layer=2)),
        ["runs.tiny: model.overrides.n_layer is not a field of the model; valid fields: dim, n_layers"],
        ALL,
    ),
    "seq_len beyond the flavor's max_seq_len": (
        config_edit(
            lambda c: (override("data", seq_len=1024)(c), override("training", global_batch_tokens=2048)(c))
        ),
        ["runs.tiny: data.seq_len = 1024 exceeds the model's max_seq_len = 512 (debug)"],
        ALL,
    ),
    # parallel layout against the processes the profile declares
    "a TP degree that does not divide the kv heads": (
        config_edit(override("parallel", tp_degree=2)),
        ["runs.tiny: parallel.tp_degree = 2 does not divide the model's n_kv_heads = 1"],
        ("--cores", "1", "--set-resources", "train_segment:train_procs_per_node=2", "--", "all"),
    ),
    "a profile with more processes than the batch divides": (
        a_profile(3),
        ["runs.tiny: training.global_batch_tokens = 256 is not divisible by", "32 × 3", "world size 3"],
        ("--profile", "profiles/big", "all"),
    ),
    # data files
    "an empty corpus file": (
        local_dataset("empty.jsonl", b""),
        ["datasets.mine.files.train: data/empty.jsonl: the file is empty"],
        ALL,
    ),
    "JSONL rows without the text field": (
        local_dataset("rows.jsonl", b'{"content": "hello"}\n'),
        ["datasets.mine.files.train: data/rows.jsonl:1: row has no 'text' field", "content"],
        ALL,
    ),
    # the command line
    "a duplicate key in a --configfile": (
        experiment_with_duplicate_dataset,
        ["config/experiments/dup.yaml:", "duplicate key datasets (first at line 1)"],
        ("--cores", "1", "--configfile", "config/experiments/dup.yaml", "--", "all"),
    ),
    "a target naming an unknown run": (
        no_edit,
        [
            "target results/runs/tinny/checkpoints/step-2: 'tinny' is not a run of the config",
            "valid runs: ['tiny']",
        ],
        ("--cores", "1", "results/runs/tinny/checkpoints/step-2"),
    ),
    "--cores 0": (
        no_edit,
        ["--cores 0: no job could ever start", "--cores N with N >= 1"],
        ("--cores", "0", "all"),
    ),
}


def first_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [
        line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Using profile")
    ]
    return lines[0] if lines else ""


@pytest.mark.parametrize("case", CASES)
def test_bad_input_stops_before_any_job_and_keeps_results(finished_run, tmp_path, case):
    edit, expected, args = CASES[case]
    workdir = tmp_path / "workflow"
    shutil.copytree(finished_run, workdir, symlinks=True)
    before = results_sha256(workdir)
    edit(workdir)
    result = _snakemake(workdir, *args)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    first = first_error_line(result)
    for fragment in expected:
        assert fragment in first, output[-3000:]
    assert "Traceback" not in output and 'File "' not in output, output[-3000:]
    assert results_sha256(workdir) == before


def test_the_finished_run_is_up_to_date(finished_run, tmp_path):
    """The copies the cases edit are finished: unedited, nothing would run (so a case that stops proves
    that its mistake, not missing outputs, stopped it)."""
    workdir = tmp_path / "workflow"
    shutil.copytree(finished_run, workdir, symlinks=True)
    result = _snakemake(workdir, "--cores", "1", "-n", "all")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_a_missing_configfile_is_snakemakes_own_error(finished_run, tmp_path):
    """Snakemake opens --configfile before it reads the Snakefile, so lmrepro cannot intercept a missing
    one: Snakemake 9 prints a traceback ending with the file named (config/README.md, Troubleshooting).
    Nothing is changed."""
    workdir = tmp_path / "workflow"
    shutil.copytree(finished_run, workdir, symlinks=True)
    before = results_sha256(workdir)
    result = _snakemake(workdir, "--cores", "1", "--configfile", "config/nope.yaml", "--", "all")
    assert result.returncode != 0
    assert "No such file or directory: 'config/nope.yaml'" in result.stderr.strip().splitlines()[-1]
    assert results_sha256(workdir) == before


def test_a_changed_run_says_which_finished_results_a_rerun_replaces(finished_run, tmp_path):
    """A valid change of a finished run's trainer config reruns it, and Snakemake removes each output before
    its job runs: the plan (`-n` too) says so first, naming the changed keys and what would be replaced."""
    workdir = tmp_path / "workflow"
    shutil.copytree(finished_run, workdir, symlinks=True)
    before = results_sha256(workdir)
    config_edit(override("optimizer", lr=0.01))(workdir)
    result = _snakemake(workdir, "--cores", "1", "-n", "all")
    assert result.returncode == 0, result.stderr[-3000:]
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("warning: runs.tiny:")]
    assert "its trainer config changed since results/runs/tiny/train.toml was written" in warning
    assert "optimizer.lr: 0.003 -> 0.01" in warning
    assert "replaces its 3 finished checkpoints" in warning and "give the changed run a new name" in warning
    assert "train_segment" in result.stdout  # and Snakemake plans the rerun the warning announces
    assert results_sha256(workdir) == before
    unchanged = tmp_path / "unchanged"
    shutil.copytree(finished_run, unchanged, symlinks=True)
    assert "warning: runs.tiny" not in _snakemake(unchanged, "--cores", "1", "-n", "all").stderr
