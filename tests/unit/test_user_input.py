"""lmrepro.user_input: config files read strictly, schema errors key path first, command-line slips, and
user errors reported in one line without a traceback."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lmrepro.user_input import (
    ConfigFileError,
    check_command_line,
    command_line_targets,
    load_config_file,
    schema_error,
    stop_on_user_error,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_the_default_config_loads_as_pyyaml_reads_it() -> None:
    assert load_config_file(REPO / "config" / "config.yaml") == DEFAULT
    assert schema_error(copy.deepcopy(DEFAULT), SCHEMA) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "runs:\n  a: {steps: 1}\n  b: {steps: 2}\n  a: {steps: 3}\n",
            "c.yaml:4:3: duplicate key runs.a (first at line 2)",
        ),
        ("datasets: {}\nruns: {}\ndatasets: {}\n", "c.yaml:3:1: duplicate key datasets (first at line 1)"),
        ("runs:\n  a:\n    evals: [{x: 1, x: 2}]\n", "c.yaml:3:20: duplicate key runs.a.evals[0].x"),
        ("runs:\n  a: {steps: 3\n", "c.yaml:3:1: YAML syntax error: expected ',' or '}'"),
        ("runs:\n  a:\n    steps: 3\n   b: 1\n", "c.yaml:4:4: YAML syntax error"),
        ("", "c.yaml: the config file is empty"),
        ("- a\n- b\n", "c.yaml: a config file holds a mapping"),
    ],
)
def test_config_file_mistakes_name_file_line_and_column(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigFileError) as e:
        load_config_file(path)
    assert str(e.value).startswith(str(tmp_path / message.split(":")[0])), str(e.value)
    assert message.split("c.yaml", 1)[1] in str(e.value)
    assert "\n" not in str(e.value)


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml: config file does not exist"):
        load_config_file(tmp_path / "nope.yaml")


def edited(change) -> dict:
    config = copy.deepcopy(DEFAULT)
    change(config)
    return config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["runs"]["tiny"].update(steps="200"), "runs.tiny.steps: '200' is not of type 'integer'"),
        (
            lambda c: c["runs"]["tiny"].update(stpes=2),
            "runs.tiny: unknown key stpes; valid keys here: ['dataset'",
        ),
        (lambda c: c["runs"].update({"..": c["runs"]["tiny"]}), "runs: name '..' is not allowed"),
        (lambda c: c["runs"].update({"a/b": c["runs"]["tiny"]}), "runs: name 'a/b' is not allowed"),
        (
            lambda c: c["datasets"].update({".": c["datasets"]["synthetic"]}),
            "datasets: name '.' is not allowed",
        ),
        (
            lambda c: c["tokenizers"]["synthetic-bpe"].update(kind="bpee"),
            "tokenizers.synthetic-bpe.kind: 'bpee' is not valid; valid: ['bpe', 'hf'",
        ),
        (
            lambda c: c["datasets"]["synthetic"].update(files={"train": "x.jsonl"}),
            "datasets.synthetic.files: not a key of source synthetic",
        ),
        (lambda c: c["runs"]["tiny"].pop("tokenizer"), "runs.tiny: 'tokenizer' is a required property"),
        (lambda c: c["evals"]["heldout"].update(max_tokens=0), "evals.heldout.max_tokens: 0 is less than"),
    ],
)
def test_schema_errors_name_the_key_path_first(change, message: str) -> None:
    assert schema_error(edited(change), SCHEMA).startswith(message)


def test_a_run_name_with_dots_inside_is_fine() -> None:
    assert schema_error(edited(lambda c: c["runs"].update({"a..b": c["runs"]["tiny"]})), SCHEMA) is None


def test_command_line_slips() -> None:
    runs = {"tiny": {}, "big": {}}
    check_command_line(
        2, ["all", "results/runs/tiny/checkpoints/step-50", "results/report/summary.csv"], runs
    )
    check_command_line(None, [], runs)  # a cluster job: no --cores
    with pytest.raises(ValueError, match=r"^--cores 0: no job could ever start"):
        check_command_line(0, ["all"], runs)
    valid = r"valid runs: \['big', 'tiny'\]"
    with pytest.raises(
        ValueError, match=rf"^target results/runs/tinny/eval: 'tinny' is not a run .*; {valid}"
    ):
        check_command_line(1, ["results/runs/tinny/eval"], runs)


def test_command_line_targets_only_of_snakemake() -> None:
    """(Snakemake's own argv is parsed by its parser: the unknown-run case of test_bad_config.py.)"""
    assert command_line_targets(["python", "train.py", "results/runs/x"]) == []


def test_a_user_error_is_one_line_and_exit_1(capsys) -> None:
    with pytest.raises(SystemExit) as e, stop_on_user_error():
        raise ValueError("runs.tiny.steps: '200' is not of type 'integer'")
    assert e.value.code == 1
    assert capsys.readouterr().err == "runs.tiny.steps: '200' is not of type 'integer'\n"
    with pytest.raises(KeyError), stop_on_user_error():  # a bug is not a user error: its traceback stays
        raise KeyError("x")
