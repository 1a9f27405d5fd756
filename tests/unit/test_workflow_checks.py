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
        "steps": 10,
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
