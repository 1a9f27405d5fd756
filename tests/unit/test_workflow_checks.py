"""Unit tests for lmrepro.workflow: segment boundaries and the parse-time config checks."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from lmrepro.workflow import (
    check_config,
    checkpoint_dir,
    eval_result,
    eval_steps,
    names_of_kind,
    previous_segment_end,
    report_files,
    run_fixed_values,
    segment_boundaries,
    with_validation,
)

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


@pytest.fixture
def config(root: Path) -> dict:
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    assert "tiny" in cfg["runs"]  # the tests below edit the embedded default run
    return cfg


def schema_valid(cfg: dict) -> dict:
    """The edited configs stay valid for the JSON schema, so only check_config can catch the problem."""
    jsonschema.validate(cfg, SCHEMA)
    return cfg


def with_local_dataset(cfg: dict, files: dict[str, str]) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["datasets"]["mine"] = {"source": "local", "files": files}
    return cfg


def write_jsonl(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"text": "hello"}) + "\n")
    return str(path)


# --------------------------------------------------------------------------------- segment boundaries


@pytest.mark.parametrize(
    ("steps", "segment_steps", "expected"),
    [
        (300, 150, [150, 300]),
        (250, 100, [100, 200, 250]),
        (100, 100, [100]),
        (5, 1, [1, 2, 3, 4, 5]),
        (7, 3, [3, 6, 7]),
        (1, 1, [1]),
    ],
)
def test_segment_boundaries(steps: int, segment_steps: int, expected: list[int]) -> None:
    ends = segment_boundaries(steps, segment_steps)
    assert ends == expected
    assert len(ends) == -(-steps // segment_steps)  # ceil(S / K) segments


@pytest.mark.parametrize(("steps", "segment_steps"), [(0, 10), (10, 0), (-5, 1), (10, -1)])
def test_segment_boundaries_invalid(steps: int, segment_steps: int) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        segment_boundaries(steps, segment_steps)


def test_eval_steps_and_previous_segment_end() -> None:
    spec = {"steps": 7, "segment_steps": 3}
    assert eval_steps(spec) == [0, 3, 6, 7]
    assert [previous_segment_end("r", spec, step) for step in (3, 6, 7)] == [0, 3, 6]
    with pytest.raises(ValueError, match=r"runs.r: step 4 is not a segment end; valid steps: \[3, 6, 7\]"):
        previous_segment_end("r", spec, 4)


def test_eval_cadence_is_independent_of_segments() -> None:
    spec = {"steps": 100, "segment_steps": 10}
    assert eval_steps({**spec, "eval_every_segments": 3}) == [0, 30, 60, 90, 100]  # the last step always
    assert eval_steps({**spec, "eval_at_steps": [20, 50]}) == [20, 50, 100]
    assert eval_steps({**spec, "eval_at_steps": [0, 70], "eval_every_segments": 5}) == [0, 50, 70, 100]
    assert eval_steps({"steps": 95, "segment_steps": 10, "eval_every_segments": 4}) == [0, 40, 80, 95]


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (
            [0, 25],
            r"runs.tiny.eval_at_steps: 25 is not a segment boundary; valid: 0 and the segment ends "
            r"\[50, 100, 150, 200\]",
        ),
        ([200, 201], "201 is not a segment boundary"),
    ],
)
def test_eval_at_steps_must_be_segment_boundaries(config: dict, root: Path, steps, message) -> None:
    config["runs"]["tiny"]["eval_at_steps"] = steps
    with pytest.raises(ValueError, match=message):
        check_config(schema_valid(config), root=root)


def test_unknown_eval_dtype_or_device_in_the_schema(config: dict) -> None:
    config["evals"]["heldout"]["dtype"] = "float8"
    with pytest.raises(
        jsonschema.ValidationError, match="'float8' is not one of \\['float32', 'bfloat16'\\]"
    ):
        schema_valid(config)
    config["evals"]["heldout"]["dtype"] = "bfloat16"
    config["evals"]["heldout"]["device"] = "tpu"
    with pytest.raises(jsonschema.ValidationError, match="'tpu' is not one of"):
        schema_valid(config)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("eval_every_segments", 0, "0 is less than the minimum of 1"),
        ("keep_optimizer_last_k", 0, "0 is less than the minimum of 1"),
    ],
)
def test_cadence_and_retention_bounds_in_the_schema(config: dict, key, value, message) -> None:
    config["runs"]["tiny"][key] = value
    with pytest.raises(jsonschema.ValidationError, match=message):
        schema_valid(config)


def test_result_paths_match_the_rules_patterns() -> None:
    assert checkpoint_dir("tiny", 50) == "results/runs/tiny/checkpoints/step-50"
    assert eval_result("tiny", 0, "heldout") == "results/runs/tiny/eval/step-0/heldout.json"
    assert report_files()[0] == "results/report/summary.csv"


def test_names_of_kind() -> None:
    specs = {"a.b": {"kind": "bpe"}, "c": {"kind": "hf"}}
    assert names_of_kind(specs, "bpe") == r"a\.b"
    assert names_of_kind(specs, "hf", "bpe") == r"a\.b|c"
    assert names_of_kind(specs, "tiktoken") == "(?!x)x"


def test_schema_fills_defaults(config: dict) -> None:
    from snakemake.utils import validate

    config["bases"] = {"b": {"format": "hf", "path": "x"}}
    del config["evals"]["heldout"]["max_tokens"]
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"), set_default=True)
    assert config["evals"]["heldout"]["max_tokens"] == 32768
    assert config["evals"]["heldout"]["pseudo_perplexity_tokens"] == 0  # MLM runs only, when asked
    assert "max_tokens" not in config["evals"]["synthetic_mc"]  # multiple_choice has no token budget
    assert "pseudo_perplexity_tokens" not in config["evals"]["synthetic_mc"]
    assert config["runs"]["tiny"]["export_dtype"] == "float32"
    assert config["bases"]["b"]["vocab"] == "keep"


# ------------------------------------------------------------------------------------- check_config


def test_default_config_passes(config: dict, root: Path) -> None:
    schema_valid(config)
    before = copy.deepcopy(config)
    check_config(config, root=root)
    assert config == before  # checking does not edit the config


def test_run_fixed_values(config: dict) -> None:
    data = {"synthetic": {"index": "x/index.json"}}
    fixed = run_fixed_values("tiny", config["runs"]["tiny"], vocab_size=512, data=data)
    assert fixed == {
        "run": "tiny",
        "run_dir": "results/runs/tiny",
        "model": {"vocab_size": 512},
        "data": {"sources": [{"name": "synthetic", "weight": 1.0, "index": "x/index.json"}]},
        "training": {
            "steps": config["runs"]["tiny"]["steps"],
            "mlm": {"mask_token_id": -1, "never_mask_ids": []},  # the defaults: set for MLM runs only
        },
    }


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("dataset", "nope", "runs.tiny.dataset = 'nope' is not a configured dataset; valid: ['synthetic']"),
        (
            "tokenizer",
            "gpt9",
            "runs.tiny.tokenizer = 'gpt9' is not a configured tokenizer; valid: ['synthetic-bpe']",
        ),
        ("evals", ["heldout", "mmlu"], "runs.tiny.evals[] = 'mmlu' is not a configured eval"),
    ],
)
def test_run_references_unknown_name(config: dict, root: Path, field: str, value, message: str) -> None:
    config["runs"]["tiny"][field] = value
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(config), root=root)
    assert message in str(e.value)


def test_tokenizer_and_eval_reference_unknown_dataset(config: dict, root: Path) -> None:
    bad_tok = copy.deepcopy(config)
    bad_tok["tokenizers"]["synthetic-bpe"]["dataset"] = "web"
    with pytest.raises(
        ValueError, match=r"tokenizers\.synthetic-bpe\.dataset = 'web' is not a configured dataset"
    ):
        check_config(schema_valid(bad_tok), root=root)
    bad_eval = copy.deepcopy(config)
    bad_eval["evals"]["heldout"]["dataset"] = "web"
    with pytest.raises(ValueError, match=r"evals\.heldout\.dataset = 'web' is not a configured dataset"):
        check_config(schema_valid(bad_eval), root=root)


def test_segment_steps_exceed_steps(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["steps"] = 100
    config["runs"]["tiny"]["segment_steps"] = 150
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(config), root=root)
    assert "runs.tiny.segment_steps = 150 exceeds runs.tiny.steps = 100" in str(e.value)


def test_unknown_override_key(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["overrides"]["optimizer"] = {"lrr": 0.01}
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(config), root=root)
    msg = str(e.value)
    assert msg.startswith("runs.tiny: overrides: unknown config key optimizer.lrr")
    assert "'lr'" in msg


def test_override_wrong_type(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["overrides"]["training"] = {"seed": "zero"}
    with pytest.raises(
        ValueError, match=r"^runs\.tiny: overrides: training\.seed = 'zero' has the wrong type"
    ):
        check_config(schema_valid(config), root=root)


def test_negative_lr_in_overrides(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["overrides"]["optimizer"]["lr"] = -0.001
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(config), root=root)
    assert str(e.value).startswith("runs.tiny:")
    assert "optimizer.lr must be > 0" in str(e.value)


def test_override_breaking_batch_divisibility(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["overrides"]["data"] = {"seq_len": 100}
    with pytest.raises(
        ValueError, match=r"runs\.tiny: .*training\.global_batch_tokens = 4096 is not a multiple"
    ):
        check_config(schema_valid(config), root=root)


def test_missing_preset(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["preset"] = "config/train/nope.toml"
    with pytest.raises(FileNotFoundError) as e:
        check_config(schema_valid(config), root=root)
    assert str(e.value).startswith("runs.tiny:")
    assert "config/train/nope.toml" in str(e.value)


def test_bad_key_in_preset_names_preset(config: dict, root: Path) -> None:
    preset = root / "config" / "train" / "debug.toml"
    preset.write_text(preset.read_text().replace("[metrics]", "[metric]"))
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(config), root=root)
    assert str(e.value).startswith(f"runs.tiny: {preset}:")
    assert "unknown config key metric" in str(e.value)


def test_local_dataset_with_missing_file(config: dict, root: Path) -> None:
    cfg = with_local_dataset(config, {"train": "data/train.jsonl", "heldout": "data/heldout.jsonl"})
    write_jsonl(root / "data" / "train.jsonl")
    with pytest.raises(FileNotFoundError) as e:
        check_config(schema_valid(cfg), root=root)
    msg = str(e.value)
    assert "datasets.mine.files.heldout" in msg
    assert "data/heldout.jsonl" in msg


def test_local_dataset_paths_are_relative_to_root(config: dict, root: Path, tmp_path: Path) -> None:
    cfg = with_local_dataset(config, {"train": "data/train.jsonl"})
    write_jsonl(root / "data" / "train.jsonl")
    check_config(schema_valid(cfg), root=root)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "config", elsewhere / "config")
    with pytest.raises(FileNotFoundError, match=r"datasets\.mine\.files\.train"):
        check_config(cfg, root=elsewhere)


def test_local_dataset_used_by_a_run(config: dict, root: Path) -> None:
    files = {
        "train": write_jsonl(root / "d" / "train.jsonl"),
        "valid": write_jsonl(root / "d" / "valid.jsonl"),
    }
    cfg = with_local_dataset(config, files)  # absolute paths work too
    cfg["tokenizers"]["mine-bpe"] = {"kind": "bpe", "dataset": "mine", "vocab_size": 1024}
    cfg["evals"]["mine_valid"] = {"kind": "loss", "dataset": "mine", "split": "valid"}
    cfg["runs"]["local"] = {
        "preset": "config/train/debug.toml",
        "dataset": "mine",
        "tokenizer": "mine-bpe",
        "steps": 20,
        "segment_steps": 5,
        "evals": ["mine_valid"],
    }
    check_config(schema_valid(cfg), root=root)


def test_eval_over_split_the_local_dataset_lacks(config: dict, root: Path) -> None:
    cfg = with_local_dataset(config, {"train": write_jsonl(root / "d" / "train.jsonl")})
    cfg["evals"]["mine_heldout"] = {"kind": "loss", "dataset": "mine", "split": "heldout"}
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(cfg), root=root)
    assert "evals.mine_heldout: dataset 'mine' has no split 'heldout'; valid: ['train']" in str(e.value)


def test_multiple_choice_eval_file_must_be_a_local_split(config: dict, root: Path) -> None:
    cfg = with_local_dataset(config, {"train": write_jsonl(root / "d" / "train.jsonl")})
    cfg["evals"]["mine_mc"] = {"kind": "multiple_choice", "dataset": "mine", "file": "mc.jsonl"}
    with pytest.raises(ValueError, match=r"evals\.mine_mc: dataset 'mine' has no split 'mc'"):
        check_config(schema_valid(cfg), root=root)
    cfg["datasets"]["mine"]["files"]["mc"] = write_jsonl(root / "d" / "mc.jsonl")
    check_config(schema_valid(cfg), root=root)


def test_eval_over_unknown_synthetic_split(config: dict, root: Path) -> None:
    config["evals"]["heldout"]["split"] = "validation"
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(config), root=root)
    assert "evals.heldout: synthetic datasets have train, heldout and mc, not 'validation'" in str(e.value)


# ------------------------------------------------------------------------------ masked language model


def mlm_run(cfg: dict, **mlm) -> dict:
    """The embedded default's run as an MLM: bidirectional, masked objective, held-out loss eval only."""
    cfg = copy.deepcopy(cfg)
    run = cfg["runs"]["tiny"]
    run["evals"] = ["heldout"]
    run.pop("text_samples", None)  # causal runs only
    run["overrides"]["model"] = {"overrides": {"causal": False}}
    run["overrides"]["training"].update(objective="mlm", mlm={"mask_token": "<|pad|>", **mlm})
    return schema_valid(cfg)


def test_mlm_run_passes(config: dict, root: Path) -> None:
    check_config(mlm_run(config), root)
    check_config(mlm_run(config, mask_token=2, replacement="80_10_10", never_mask_tokens=[]), root)


def test_text_samples_need_a_causal_text_run(config: dict, root: Path) -> None:
    cfg = mlm_run(config)
    cfg["runs"]["tiny"]["text_samples"] = {"prompts": ["the owl"]}
    with pytest.raises(ValueError, match=r"runs\.tiny\.text_samples: text samples continue prompts"):
        check_config(schema_valid(cfg), root)


def test_wikitext_layout_has_validation_and_test_splits(config: dict, root: Path) -> None:
    config["datasets"]["synthetic"] = {"source": "synthetic", "layout": "wikitext"}
    config["evals"] = {"heldout": {"kind": "loss", "dataset": "synthetic", "split": "heldout"}}
    config["runs"]["tiny"]["evals"] = ["heldout"]
    with pytest.raises(ValueError, match="synthetic datasets have train, validation and test, not 'heldout'"):
        check_config(schema_valid(config), root=root)
    config["evals"]["heldout"]["split"] = "validation"
    check_config(schema_valid(config), root=root)


@pytest.mark.parametrize(
    ("causal", "objective", "message"),
    [
        (
            False,
            "causal",
            "runs.tiny: model.overrides.causal = false (bidirectional attention) needs training.objective "
            "= 'mlm'",
        ),
        (True, "mlm", "runs.tiny: training.objective = 'mlm' needs model.overrides.causal = false"),
        (None, "mlm", "runs.tiny: training.objective = 'mlm' needs model.overrides.causal = false"),
    ],
)
def test_objective_and_attention_must_agree(config: dict, root: Path, causal, objective, message) -> None:
    cfg = mlm_run(config)
    overrides = cfg["runs"]["tiny"]["overrides"]
    overrides["training"]["objective"] = objective
    overrides["model"] = {"overrides": {} if causal is None else {"causal": causal}}
    with pytest.raises(ValueError) as e:
        check_config(cfg, root)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("mlm", "message"),
    [
        ({"mask_ratio": 0}, "training.mlm.mask_ratio must be a number with 0 < ratio < 1, got 0.0"),
        ({"mask_ratio": 1.0}, "training.mlm.mask_ratio must be a number with 0 < ratio < 1, got 1.0"),
        ({"mask_ratio": -0.2}, "training.mlm.mask_ratio must be a number with 0 < ratio < 1, got -0.2"),
        (
            {"mask_token": "<|reserved_special_token_100|>"},
            "training.mlm.mask_token '<|reserved_special_token_100|>' is not in the tokenizer's vocabulary",
        ),
        ({"mask_token": 512}, "training.mlm.mask_token 512 is not in the tokenizer's vocabulary of 512"),
        ({"never_mask_tokens": ["<|sep|>"]}, "never_mask_tokens: '<|sep|>' is not in the tokenizer's"),
        ({"replacement": "90_10"}, "training.mlm.replacement = '90_10' is not valid"),
        ({"mask_token_id": 3}, "training.mlm.mask_token_id is set by the workflow"),
    ],
)
def test_bad_mlm_settings_stop_at_parse_time(config: dict, root: Path, mlm: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        check_config(mlm_run(config, **mlm), root)
    assert str(e.value).startswith("runs.tiny") and "\n" not in str(e.value)


def test_mlm_run_refuses_causal_only_evals(config: dict, root: Path) -> None:
    cfg = mlm_run(config)
    cfg["runs"]["tiny"]["evals"] = ["heldout", "synthetic_mc"]
    with pytest.raises(ValueError, match=r"runs.tiny.evals: synthetic_mc is a multiple_choice eval"):
        check_config(cfg, root)


def test_in_loop_validation_resolves_a_loss_eval_and_refuses_the_rest(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["validation"] = {"eval": "heldout", "every_steps": 10}
    check_config(schema_valid(config), root=root)
    fixed = run_fixed_values("tiny", with_validation(config["runs"]["tiny"], config["evals"], "tiny"))
    assert fixed["validation"] == {
        "every_steps": 10,
        "name": "heldout",
        "index": "results/data/synthetic/synthetic-bpe/heldout/index.json",
        "max_tokens": 32768,
    }
    cases = {
        "nope": r"^runs\.tiny\.validation\.eval = 'nope' is not a configured eval",
        "synthetic_mc": r"^runs\.tiny\.validation\.eval = 'synthetic_mc' is a multiple_choice eval",
    }
    for name, message in cases.items():
        config["runs"]["tiny"]["validation"]["eval"] = name
        with pytest.raises(ValueError, match=message):
            check_config(schema_valid(config), root=root)


# ------------------------------------------------------------------------- everything a run's config says
# Each case: one mistake in the embedded default, the start of the one-line error check_config raises
# (before any job: the Snakefile runs check_config while it builds the DAG; test_bad_config.py runs some
# of them through the command line on a finished run).


def model_overrides(**values):
    return lambda c: (
        c["runs"]["tiny"]["overrides"].setdefault("model", {}).setdefault("overrides", {}).update(values)
    )


def trainer(section: str, **values):
    return lambda c: c["runs"]["tiny"]["overrides"].setdefault(section, {}).update(values)


RUN_CASES = {
    "unknown flavor": (
        trainer("model", flavor="13B"),
        1,
        "runs.tiny: model.flavor = '13B' is not a flavor; valid flavors: debug, 250M",
    ),
    "n_heads not dividing dim": (
        model_overrides(n_heads=5),
        1,
        "runs.tiny: model.overrides (n_heads = 5) of flavor 'debug': dim (128) must be divisible by "
        "n_heads (5)",
    ),
    "n_kv_heads not dividing n_heads": (
        model_overrides(n_kv_heads=3),
        1,
        "runs.tiny: model.overrides (n_kv_heads = 3) of flavor 'debug': n_heads (4) must be a multiple of "
        "n_kv_heads (3)",
    ),
    "unknown model override": (
        model_overrides(layers=2),
        1,
        "runs.tiny: model.overrides.layers is not a field of the model; valid fields: dim, n_layers",
    ),
    "wrongly typed model override": (
        model_overrides(n_layers="2"),
        1,
        "runs.tiny: model.overrides.n_layers = '2' has the wrong type; expected int",
    ),
    "seq_len beyond max_seq_len": (
        trainer("data", seq_len=1024),
        1,
        "runs.tiny: data.seq_len = 1024 exceeds the model's max_seq_len = 512 (debug)",
    ),
    "TP not dividing the heads": (
        trainer("parallel", tp_degree=3),
        3,
        "runs.tiny: parallel.tp_degree = 3 does not divide the model's n_heads = 4",
    ),
    "TP on one process": (
        trainer("parallel", tp_degree=2),
        1,
        "runs.tiny: world size 1 is not divisible by parallel.dp_replicate_degree × tp_degree = 1 × 2",
    ),
    "FSDP degree not the world size": (
        trainer("parallel", dp_shard_degree=4),
        2,
        "runs.tiny: parallel degrees replicate 1 × shard 4 × tp 1 = 4 do not equal the world size 2",
    ),
    "batch not divisible over the ranks": (
        (lambda c: None),
        3,
        "runs.tiny: training.global_batch_tokens = 4096 is not divisible by data.seq_len × data-parallel "
        "ranks = 128 × 3",
    ),
    "micro batch not dividing the local batch": (
        trainer("training", micro_batch_sequences=5),
        1,
        "runs.tiny: training.micro_batch_sequences = 5 does not divide the local batch of 32",
    ),
    "warmup longer than the run": (
        trainer("schedule", warmup_steps=500),
        1,
        "runs.tiny: schedule.warmup_steps = 500 exceeds runs.tiny.steps = 200",
    ),
    "validation less often than the run": (
        lambda c: c["runs"]["tiny"].update(validation={"eval": "heldout", "every_steps": 300}),
        1,
        "runs.tiny.validation.every_steps = 300 exceeds runs.tiny.steps = 200",
    ),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_run_mistakes_stop_at_parse_time(config: dict, root: Path, case: str) -> None:
    change, world_size, message = RUN_CASES[case]
    change(config)
    with pytest.raises(ValueError) as e:
        # the processes as a profile's set-resources declares them (runs.<run>.layout: test_presets.py)
        check_config(schema_valid(config), root=root, declared_train={"train_procs_per_node": world_size})
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_the_default_passes_on_the_processes_a_site_profile_declares(config: dict, root: Path) -> None:
    check_config(config, root=root, declared_train={"train_procs_per_node": 4, "nodes": 2})


# ------------------------------------------------------------------------------------------ data files


def parquet_file(path: Path, column: str) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: ["a document", "another"]}), path)
    return path.read_bytes()


DATA_CASES = {
    "empty file": ("train.jsonl", b"", "datasets.mine.files.train: {root}/d/train.jsonl: the file is empty"),
    "blank lines only": (
        "train.jsonl",
        b"\n\n  \n",
        "datasets.mine.files.train: {root}/d/train.jsonl: no rows",
    ),
    "rows without the text field": (
        "train.jsonl",
        b'{"body": "x"}\n',
        "datasets.mine.files.train: {root}/d/train.jsonl:1: row has no 'text' field (keys: ['body']); set "
        "the dataset's text_field",
    ),
    "not JSON": (
        "train.jsonl",
        b"text,label\n",
        "datasets.mine.files.train: {root}/d/train.jsonl:1: not valid JSON",
    ),
    "invalid UTF-8": (
        "train.jsonl",
        b'{"text": "caf\xe9"}\n',
        "datasets.mine.files.train: {root}/d/train.jsonl: not UTF-8 at byte 13",
    ),
    "a gzip file that is not gzip": (
        "train.jsonl.gz",
        b'{"text": "x"}\n',
        "datasets.mine.files.train: {root}/d/train.jsonl.gz: not a readable gzip file",
    ),
    "unsupported extension": (
        "train.csv",
        b"text\nhello\n",
        "datasets.mine.files.train: {root}/d/train.csv: unsupported file type; supported: .jsonl.gz",
    ),
    "parquet with another text column": (
        "train.parquet",
        "content",
        "datasets.mine.files.train: {root}/d/train.parquet: no column 'text' (columns: ['content']); set "
        "the dataset's text_field",
    ),
    "a parquet file that is not parquet": (
        "train.parquet",
        b"PAR1 nope",
        "datasets.mine.files.train: {root}/d/train.parquet: not a readable Parquet file",
    ),
}


@pytest.mark.parametrize("case", DATA_CASES)
def test_data_file_mistakes_stop_at_parse_time(config: dict, root: Path, case: str) -> None:
    name, content, message = DATA_CASES[case]
    path = root / "d" / name
    path.parent.mkdir()
    if isinstance(content, str):
        parquet_file(path, content)
    else:
        path.write_bytes(content)
    cfg = with_local_dataset(config, {"train": str(path)})
    with pytest.raises(ValueError) as e:
        check_config(schema_valid(cfg), root=root)
    assert str(e.value).startswith(message.format(root=root)), str(e.value)


def test_good_data_files_pass(config: dict, root: Path) -> None:
    (root / "d").mkdir()
    parquet_file(root / "d" / "a.parquet", "body")
    (root / "d" / "b.jsonl").write_text('\n{"body": "naïve"}\n')
    example = {"ctx": "The cat", "endings": ["sat.", "flew."], "label": 0}
    (root / "d" / "mc.jsonl").write_text(json.dumps(example) + "\n")  # an eval's examples have no text field
    cfg = with_local_dataset(config, {"train": ["d/a.parquet", "d/b.jsonl"], "mc": "d/mc.jsonl"})
    cfg["datasets"]["mine"]["text_field"] = "body"
    cfg["evals"]["mine_mc"] = {"kind": "multiple_choice", "dataset": "mine", "file": "mc.jsonl"}
    check_config(schema_valid(cfg), root=root)


# ------------------------------------------------------------------------------ tokenizers and bases


TOKENIZER_CASES = {
    "a tiktoken folder without tokenizer.model": (
        {"kind": "tiktoken", "path": "tok"},
        {},
        "tokenizers.t.path: tok/tokenizer.model does not exist (kind tiktoken reads a tokenizer.model)",
    ),
    "a tokenizer.json given as tiktoken": (
        {"kind": "tiktoken", "path": "tok/tokenizer.json"},
        {"tokenizer.json": b'{"model": {}}'},
        "tokenizers.t.path: tok/tokenizer.json is not a tiktoken model; it looks like kind hf",
    ),
    "a tiktoken file given as sentencepiece": (
        {"kind": "sentencepiece", "path": "tok"},
        {"tokenizer.model": b"IQ== 0\nIg== 1\n"},
        "tokenizers.t.path: tok/tokenizer.model is not a sentencepiece model; it looks like kind tiktoken",
    ),
    "a sentencepiece model given as tiktoken": (
        {"kind": "tiktoken", "path": "tok"},
        {"tokenizer.model": b"\n\x0b\n\x05<unk>\x15\x00\x00\x00\x00\x18\x02"},
        "tokenizers.t.path: tok/tokenizer.model is not a tiktoken model; it looks like kind sentencepiece",
    ),
    "an hf folder without tokenizer.json": (
        {"kind": "hf", "path": "tok"},
        {"tokenizer.model": b"IQ== 0\n"},
        "tokenizers.t.path: tok has no tokenizer.json (kind hf is a Hugging Face tokenizer folder",
    ),
}


@pytest.mark.parametrize("case", TOKENIZER_CASES)
def test_tokenizer_file_mistakes_stop_at_parse_time(config: dict, root: Path, case: str) -> None:
    spec, files, message = TOKENIZER_CASES[case]
    (root / "tok").mkdir()
    for name, content in files.items():
        (root / "tok" / name).write_bytes(content)
    config["tokenizers"]["t"] = spec
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        check_config(schema_valid(config), root=root)
    assert str(e.value).startswith(message), str(e.value)


BASE_CASES = {
    "a base folder that does not exist": (
        {"format": "hf", "path": "bases/nope"},
        {},
        "bases.b.path: bases/nope is not a folder",
    ),
    "a meta base declared as hf": (
        {"format": "hf", "path": "base"},
        {"params.json": '{"dim": 64, "n_layers": 1, "n_heads": 4}'},
        "bases.b: no config.json in HF folder '{root}/base'",
    ),
    "an hf base declared as meta": (
        {"format": "meta", "path": "base"},
        {"config.json": '{"model_type": "llama"}'},
        "bases.b: no params.json in Meta checkpoint folder '{root}/base'",
    ),
}


@pytest.mark.parametrize("case", BASE_CASES)
def test_base_mistakes_stop_at_parse_time(config: dict, root: Path, case: str) -> None:
    spec, files, message = BASE_CASES[case]
    for name, content in files.items():
        (root / spec["path"]).mkdir(exist_ok=True)
        (root / spec["path"] / name).write_text(content)
    config["bases"] = {"b": {**spec, "vocab": "keep"}}
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        check_config(schema_valid(config), root=root)
    assert str(e.value).startswith(message.format(root=root)), str(e.value)


def test_transformers_mistakes_stop_at_parse_time(config: dict, root: Path) -> None:
    """(Moved from the command-line suite: check_config decides them alone.)"""
    config["runs"]["tiny"]["overrides"]["model"] = {"hf": {"model_type": "t5"}}
    with pytest.raises(
        ValueError, match=r"^runs\.tiny: model\.hf\.model_type: model type 't5' has no causal LM"
    ):
        check_config(schema_valid(config), root=root)
    config["runs"]["tiny"]["overrides"]["model"] = {"hf": {"config": "models/nowhere"}}
    with pytest.raises(
        (ValueError, FileNotFoundError),
        match=r"^runs\.tiny: model\.hf\.config = models/nowhere: no config\.json",
    ):
        check_config(schema_valid(config), root=root)
    config["runs"]["tiny"]["overrides"]["model"] = {
        "hf": {"model_type": "gpt2", "config_values": {"n_layer": 1}}
    }
    kfac = {"enabled": True, "factor_update_steps": 1, "inv_update_steps": 1}
    config["runs"]["tiny"]["overrides"]["optimizer"]["kfac"] = kfac
    with pytest.raises(ValueError, match=r"^runs\.tiny: optimizer\.kfac\.enabled = true: .*Conv1D"):
        check_config(schema_valid(config), root=root)
