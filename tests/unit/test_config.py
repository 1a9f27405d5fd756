"""Unit tests for lmrepro.config: strict TOML loading, validation, merging and rendering of job configs."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest

from lmrepro.config import (
    JobConfig,
    ModelConfig,
    OptimizerConfig,
    config_sha256,
    dump_toml,
    from_dict,
    load_job_config,
    merge,
    render_job_config,
    to_dict,
    validate,
)

PRESET = """\
[model]
flavor = "debug"

[data]
seq_len = 128

[optimizer]
lr = 0.003
weight_decay = 0.1

[schedule]
warmup_steps = 20
decay = "cosine"
min_lr_ratio = 0.1

[training]
global_batch_tokens = 4096
"""


def write(tmp_path: Path, text: str, name: str = "train.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------ loading


def test_load_valid_file_reads_every_section(tmp_path: Path) -> None:
    job = load_job_config(write(tmp_path, PRESET + "\n[metrics]\ntensorboard = false\n"))
    assert job.model.flavor == "debug"
    assert job.data.seq_len == 128
    assert job.optimizer.lr == pytest.approx(0.003)
    assert job.schedule.warmup_steps == 20
    assert job.training.global_batch_tokens == 4096
    assert job.metrics.tensorboard is False
    # Keys absent from the file keep their dataclass defaults.
    assert job.optimizer.beta2 == OptimizerConfig().beta2
    assert job.parallel.tp_degree == 1


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_job_config(write(tmp_path, "")) == JobConfig()


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "foo = 1\n" + PRESET)  # before the first [table], so top level
    with pytest.raises(ValueError) as e:
        load_job_config(path)
    msg = str(e.value)
    assert str(path) in msg
    assert "unknown config key foo" in msg
    # Lists the valid keys at that level.
    for key in ("model", "optimizer", "schedule", "training", "run"):
        assert repr(key) in msg


def test_unknown_nested_key_names_dotted_key_and_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, PRESET.replace("lr = 0.003", "lrr = 0.003"))
    with pytest.raises(ValueError) as e:
        load_job_config(path)
    msg = str(e.value)
    assert "optimizer.lrr" in msg
    assert str(path) in msg
    for key in ("lr", "beta1", "beta2", "eps", "weight_decay", "grad_clip_norm", "name"):
        assert repr(key) in msg


def test_unknown_key_in_deeper_table_names_full_path() -> None:
    with pytest.raises(ValueError, match=r"unknown config key schedule\.warmup\b"):
        from_dict(JobConfig, {"schedule": {"warmup": 3}})


def test_string_for_float_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, PRESET.replace("lr = 0.003", 'lr = "0.003"'))
    with pytest.raises(ValueError, match=r"optimizer\.lr = '0\.003' has the wrong type; expected float"):
        load_job_config(path)


def test_bool_for_int_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, PRESET + "steps = true\n")
    with pytest.raises(ValueError, match=r"training\.steps = True has the wrong type; expected int"):
        load_job_config(path)


def test_float_for_int_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"training\.steps = 1\.5 has the wrong type"):
        from_dict(JobConfig, {"training": {"steps": 1.5}})


def test_bool_for_float_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"optimizer\.lr = True has the wrong type"):
        from_dict(JobConfig, {"optimizer": {"lr": True}})


def test_int_is_accepted_for_float(tmp_path: Path) -> None:
    job = load_job_config(write(tmp_path, PRESET.replace("weight_decay = 0.1", "weight_decay = 0")))
    assert job.optimizer.weight_decay == 0.0
    assert isinstance(job.optimizer.weight_decay, float)


def test_scalar_where_table_expected_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"^optimizer must be a table"):
        from_dict(JobConfig, {"optimizer": 3})
    with pytest.raises(ValueError, match=r"model\.overrides must be a table"):
        from_dict(JobConfig, {"model": {"overrides": 2}})


def test_model_overrides_table_is_free_form() -> None:
    job = from_dict(JobConfig, {"model": {"overrides": {"n_layers": 2, "causal": False}}})
    assert job.model.overrides == {"n_layers": 2, "causal": False}


def test_literal_rejects_value_and_lists_valid_ones(tmp_path: Path) -> None:
    path = write(tmp_path, PRESET.replace('decay = "cosine"', 'decay = "foo"'))
    with pytest.raises(ValueError) as e:
        load_job_config(path)
    msg = str(e.value)
    assert "schedule.decay = 'foo' is not valid" in msg
    assert "['cosine', 'linear', 'constant', 'wsd']" in msg


def test_literal_accepts_each_valid_value() -> None:
    for decay in ("cosine", "linear", "constant", "wsd"):
        assert from_dict(JobConfig, {"schedule": {"decay": decay}}).schedule.decay == decay
    with pytest.raises(ValueError, match=r"training\.dtype = 'float16' is not valid"):
        from_dict(JobConfig, {"training": {"dtype": "float16"}})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[optimizer\nlr = 1\n")
    with pytest.raises(ValueError, match="not valid TOML") as e:
        load_job_config(path)
    assert str(path) in str(e.value)


def test_missing_file_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "train.toml"
    with pytest.raises(FileNotFoundError) as e:
        load_job_config(path)
    assert str(path) in str(e.value)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_job_config(tmp_path)


# ------------------------------------------------------------------------------------------ validate


@pytest.mark.parametrize("lr", [-1e-3, 0.0, 0])
def test_non_positive_lr_is_rejected(tmp_path: Path, lr: float) -> None:
    path = write(tmp_path, PRESET.replace("lr = 0.003", f"lr = {lr}"))
    with pytest.raises(ValueError, match=r"optimizer\.lr must be > 0") as e:
        load_job_config(path)
    assert str(path) in str(e.value)


def test_global_batch_not_multiple_of_seq_len(tmp_path: Path) -> None:
    path = write(tmp_path, PRESET.replace("global_batch_tokens = 4096", "global_batch_tokens = 4000"))
    with pytest.raises(ValueError) as e:
        load_job_config(path)
    msg = str(e.value)
    assert "training.global_batch_tokens = 4000 is not a multiple of data.seq_len = 128" in msg


@pytest.mark.parametrize("ratio", [-0.1, 1.5])
def test_min_lr_ratio_out_of_range(ratio: float) -> None:
    job = JobConfig()
    job.schedule.min_lr_ratio = ratio
    with pytest.raises(ValueError, match=r"schedule\.min_lr_ratio must be in \[0, 1\]"):
        validate(job)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 0.5])
def test_min_lr_ratio_bounds_are_inclusive(ratio: float) -> None:
    job = JobConfig()
    job.schedule.min_lr_ratio = ratio
    validate(job)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("data", "seq_len", 0, "data.seq_len must be > 0"),
        ("training", "steps", -1, "training.steps must be > 0"),
        ("schedule", "warmup_steps", -1, "schedule.warmup_steps must be >= 0"),
        ("optimizer", "weight_decay", -0.5, "optimizer.weight_decay must be >= 0"),
        ("schedule", "decay_fraction", 0.0, "schedule.decay_fraction must be in (0, 1]"),
        ("schedule", "decay_fraction", 1.2, "schedule.decay_fraction must be in (0, 1]"),
    ],
)
def test_other_value_checks(section: str, key: str, value: float, message: str) -> None:
    job = JobConfig()
    setattr(getattr(job, section), key, value)
    with pytest.raises(ValueError) as e:
        validate(job)
    assert message in str(e.value)


def test_defaults_are_valid() -> None:
    validate(JobConfig())


# ------------------------------------------------------------------------------ dump / fingerprint


def test_dump_toml_round_trip(tmp_path: Path) -> None:
    job = load_job_config(write(tmp_path, PRESET))
    job.run = "tiny"
    job.run_dir = "results/runs/tiny"
    job.model.overrides = {"n_layers": 2, "causal": False, "rope_theta": 10000.0}
    job.schedule.decay = "wsd"
    job.training.dtype = "bfloat16"
    job.training.objective = "mlm"  # bidirectional attention needs the masked objective
    job.training.mlm.never_mask_tokens = ["bos", 7, "<|pad|>"]  # strings and ids in one array
    job.metrics.tensorboard = False
    text = dump_toml(job)
    # It is real TOML whose tables mirror the dataclasses.
    assert tomllib.loads(text) == to_dict(job)
    again = load_job_config(write(tmp_path, text, "dumped.toml"))
    assert again == job
    assert dump_toml(again) == text


def test_config_sha256_tracks_lr_only() -> None:
    base = JobConfig()
    same = JobConfig()
    assert config_sha256(base) == config_sha256(same)
    changed = copy.deepcopy(base)
    changed.optimizer.lr = base.optimizer.lr * 2
    assert config_sha256(changed) != config_sha256(base)
    # An int written for a float loads as the same float, hence the same fingerprint.
    a = from_dict(JobConfig, {"optimizer": {"lr": 1}})
    b = from_dict(JobConfig, {"optimizer": {"lr": 1.0}})
    assert config_sha256(a) == config_sha256(b)
    assert len(config_sha256(base)) == 64 and int(config_sha256(base), 16) >= 0


def test_config_sha256_of_loaded_file_is_stable(tmp_path: Path) -> None:
    first = load_job_config(write(tmp_path, PRESET, "a.toml"))
    # Same values, different key order and formatting.
    reordered = "[training]\nglobal_batch_tokens = 4_096\n\n" + PRESET.replace(
        "[training]\nglobal_batch_tokens = 4096\n", ""
    )
    second = load_job_config(write(tmp_path, reordered, "b.toml"))
    assert config_sha256(first) == config_sha256(second)


# ------------------------------------------------------------------------------------------- merge


def test_merge_nested_tables_merge_and_scalars_replace() -> None:
    base = {"optimizer": {"lr": 1.0, "beta1": 0.9}, "data": {"seq_len": 128}, "run": "a"}
    over = {"optimizer": {"lr": 2.0}, "run": "b", "training": {"steps": 5}}
    merged = merge(base, over)
    assert merged == {
        "optimizer": {"lr": 2.0, "beta1": 0.9},
        "data": {"seq_len": 128},
        "run": "b",
        "training": {"steps": 5},
    }


def test_merge_does_not_mutate_inputs() -> None:
    base = {"optimizer": {"lr": 1.0, "beta1": 0.9}, "model": {"overrides": {"dim": 64}}}
    over = {"optimizer": {"lr": 2.0}, "model": {"overrides": {"n_layers": 1}}}
    base_copy, over_copy = copy.deepcopy(base), copy.deepcopy(over)
    merge(base, over)
    assert base == base_copy
    assert over == over_copy


def test_merge_replaces_overrides_table_whole() -> None:
    base = {"model": {"flavor": "debug", "overrides": {"n_layers": 2, "dim": 64}}}
    merged = merge(base, {"model": {"overrides": {"n_layers": 4}}})
    assert merged == {"model": {"flavor": "debug", "overrides": {"n_layers": 4}}}


def test_merge_table_replaces_scalar_and_vice_versa() -> None:
    assert merge({"a": 1}, {"a": {"b": 2}}) == {"a": {"b": 2}}
    assert merge({"a": {"b": 2}}, {"a": 1}) == {"a": 1}


# ----------------------------------------------------------------------------------------- render


def test_render_precedence_preset_overrides_fixed(tmp_path: Path) -> None:
    preset = write(tmp_path, PRESET, "preset.toml")
    overrides = {"optimizer": {"lr": 0.01}, "training": {"seed": 3}}
    fixed = {"run": "tiny", "model": {"vocab_size": 512}, "training": {"steps": 300}}
    job = render_job_config(preset, overrides, fixed)
    assert job.optimizer.lr == pytest.approx(0.01)  # overrides beat the preset
    assert job.optimizer.weight_decay == pytest.approx(0.1)  # untouched preset key survives
    assert job.training.seed == 3
    assert job.training.steps == 300  # fixed values complete the config
    assert job.run == "tiny"
    assert job.model.vocab_size == 512
    assert job.model.flavor == "debug"
    assert job.data.seq_len == 128


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"training": {"steps": 7}}, "training.steps"),
        ({"run": "x"}, "run"),
        ({"model": {"vocab_size": 9}}, "model.vocab_size"),
    ],
)
def test_render_refuses_overrides_of_workflow_owned_keys(tmp_path: Path, overrides, key) -> None:
    preset = write(tmp_path, PRESET, "preset.toml")
    fixed = {"run": "tiny", "model": {"vocab_size": 512}, "training": {"steps": 300}}
    with pytest.raises(ValueError, match=rf"^overrides: {key} is set by the workflow"):
        render_job_config(preset, overrides, fixed)


def test_render_unknown_override_key(tmp_path: Path) -> None:
    preset = write(tmp_path, PRESET, "preset.toml")
    with pytest.raises(ValueError) as e:
        render_job_config(preset, {"optimizer": {"lrr": 1.0}}, {})
    msg = str(e.value)
    assert msg.startswith("overrides:")
    assert "optimizer.lrr" in msg
    assert "'lr'" in msg


def test_render_wrong_type_in_overrides(tmp_path: Path) -> None:
    preset = write(tmp_path, PRESET, "preset.toml")
    with pytest.raises(ValueError, match=r"^overrides: training\.steps = 'ten'"):
        render_job_config(preset, {"training": {"steps": "ten"}}, {})


def test_render_bad_key_in_preset_names_preset(tmp_path: Path) -> None:
    preset = write(tmp_path, PRESET.replace("seq_len = 128", "seq_length = 128"), "preset.toml")
    with pytest.raises(ValueError) as e:
        render_job_config(preset, {}, {})
    msg = str(e.value)
    assert msg.startswith(f"{preset}:")
    assert "data.seq_length" in msg


def test_render_validates_merged_values(tmp_path: Path) -> None:
    preset = write(tmp_path, PRESET, "preset.toml")
    with pytest.raises(ValueError, match=r"optimizer\.lr must be > 0"):
        render_job_config(preset, {"optimizer": {"lr": -1.0}}, {})
    with pytest.raises(ValueError, match=r"not a multiple of data\.seq_len = 100"):
        render_job_config(preset, {"data": {"seq_len": 100}}, {})


def test_render_missing_preset(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        render_job_config(missing, {}, {})


def test_render_model_overrides_replace_preset_table(tmp_path: Path) -> None:
    preset = write(tmp_path, PRESET + "\n[model.overrides]\nn_layers = 2\ndim = 64\n", "preset.toml")
    job = render_job_config(preset, {"model": {"overrides": {"n_layers": 4}}}, {})
    assert job.model.overrides == {"n_layers": 4}
    assert job.model == ModelConfig(flavor="debug", overrides={"n_layers": 4})


def test_render_invalid_toml_preset_names_preset(tmp_path: Path) -> None:
    preset = write(tmp_path, "[optimizer\nlr = 1\n", "preset.toml")
    with pytest.raises(ValueError) as e:
        render_job_config(preset, {}, {})
    assert str(preset) in str(e.value)


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"training": {"token_weights": "w.pt"}, "parallel": {"tp_degree": 2}},
         "training.token_weights is not supported with parallel.tp_degree > 1"),
        ({"training": {"token_weights": "w.pt", "token_weights_cap": 5.0}},
         "training.token_weights_cap applies to training.token_weights = 'inverse_frequency' only"),
        ({"training": {"token_weights": "inverse_frequency", "token_weights_cap": 0.0}},
         "training.token_weights_cap must be > 0"),
        ({"training": {"token_weights": "inverse_frequency", "token_weights_sep": -2.0}},
         "training.token_weights_sep must be -1"),
    ],
)  # fmt: skip
def test_token_weight_settings_are_checked(sections: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate(from_dict(JobConfig, sections))
