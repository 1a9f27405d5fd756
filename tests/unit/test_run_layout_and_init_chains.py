"""runs.<run>.layout as job resources and parse-time check; init chains (runs.<run>.init: {run, step})."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from lmrepro.checkpoint.dcp import load_model
from lmrepro.checkpoint.init_base import INIT_RECORD
from lmrepro.config import render_job_config
from lmrepro.run_layout import RunLayout, job_resources, run_layout, train_resources
from lmrepro.train.trainer import init_checkpoint
from lmrepro.workflow import check_config, init_run_step, run_fixed_values

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


@pytest.fixture
def config(root: Path) -> dict:
    """The embedded default with a second run, `tuned`, started from the default run's checkpoint."""
    cfg = yaml.safe_load((root / "config" / "config.yaml").read_text())
    tiny = cfg["runs"]["tiny"]
    cfg["runs"]["tuned"] = {**copy.deepcopy(tiny), "steps": 20, "segment_steps": 10}
    cfg["runs"]["tuned"]["init"] = {"run": "tiny", "step": "last"}
    return cfg


def test_layout_resources_one_node_and_several() -> None:
    one = train_resources(run_layout({}))
    assert (one["nodes"], one["tasks"], one["mpi"], one["gres"], one["train_procs_per_node"]) == (
        1,
        1,
        "",
        "",
        1,
    )
    big = run_layout({"layout": {"nodes": 16, "gpus_per_node": 4, "mem_mb": 1000, "eval": {"gpus": 1}}})
    assert big.processes_per_node == 4 and big.world_size == 64
    many = train_resources(big)
    assert (many["nodes"], many["tasks"], many["mpi"], many["gres"], many["mem_mb"]) == (
        16,
        16,
        "srun",
        "gpu:4",
        1000,
    )
    assert job_resources(big.eval)["gres"] == "gpu:1" and job_resources(big.export)["gres"] == ""


def test_default_config_with_a_layout_and_an_init_chain_passes(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["layout"] = {"nodes": 2, "processes_per_node": 2}  # 4 ranks: 32 sequences split
    check_config(config, root)
    assert init_run_step(config["runs"], "tuned") == ("tiny", config["runs"]["tiny"]["steps"])


def test_layout_that_does_not_divide_the_batch_stops_at_parse_time(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["layout"] = {"nodes": 3, "processes_per_node": 1}
    with pytest.raises(ValueError, match=r"^runs\.tiny\.layout \(3 nodes × 1 processes = 3 ranks\): "):
        check_config(config, root)


@pytest.mark.parametrize(
    ("init", "message"),
    [
        (
            {"run": "nope", "step": 10},
            r"runs\.tuned\.init\.run = 'nope' is not another run .* valid: \['tiny'\]",
        ),
        (
            {"run": "tiny", "step": 7},
            r"runs\.tuned\.init\.step = 7 is not a segment end of run tiny; valid: \[",
        ),
        ({"run": "tuned", "step": 10}, r"runs\.tuned\.init\.run = 'tuned' is not another run"),
    ],
    ids=["unknown-run", "not-a-segment-end", "itself"],
)
def test_init_chain_to_a_missing_run_or_step_stops(
    config: dict, root: Path, init: dict, message: str
) -> None:
    config["runs"]["tuned"]["init"] = init
    with pytest.raises(ValueError, match=message):
        check_config(config, root)


def test_init_chain_cycle_stops(config: dict, root: Path) -> None:
    config["runs"]["tiny"]["init"] = {"run": "tuned", "step": 20}
    with pytest.raises(
        ValueError, match=r"init chain is a cycle: (tiny -> tuned -> tiny|tuned -> tiny -> tuned)"
    ):
        check_config(config, root)


def test_init_chain_to_another_model_stops(config: dict, root: Path) -> None:
    config["runs"]["tuned"].setdefault("overrides", {}).setdefault("model", {})["overrides"] = {"n_layers": 2}
    with pytest.raises(ValueError, match=r"runs\.tuned\.init: the model differs from run tiny's"):
        check_config(config, root)


def debug_job(run: str, seed: int, **model):
    spec = {"dataset": "d", "tokenizer": "t", "steps": 10, "preset": "config/train/debug.toml"}
    overrides = {"training": {"seed": seed}, "model": {"overrides": model}}
    return render_job_config(REPO / spec["preset"], overrides, run_fixed_values(run, spec, vocab_size=256))


def test_step_zero_from_another_runs_checkpoint_is_its_weights(tmp_path: Path) -> None:
    """Every weight comes from the source run (seed 1), none from the fine-tune's own init (seed 2); a
    fine-tune of another shape is refused."""
    init_checkpoint(debug_job("source", seed=1), tmp_path / "source")
    init_checkpoint(debug_job("tuned", seed=2), tmp_path / "tuned", from_run=tmp_path / "source")
    source, _ = load_model(tmp_path / "source")
    tuned, _ = load_model(tmp_path / "tuned")
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    record = json.loads((tmp_path / "tuned" / INIT_RECORD).read_text())
    assert record["run_checkpoint"] == str(tmp_path / "source") and record["step"] == 0
    with pytest.raises(ValueError, match="n_layers"):
        init_checkpoint(
            debug_job("other", seed=2, n_layers=2), tmp_path / "other", from_run=tmp_path / "source"
        )


def test_run_layout_dataclass_defaults_match_the_schema() -> None:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["runs"]["additionalProperties"]["properties"]["layout"]["properties"]
    layout = RunLayout()
    for key in ("nodes", "gpus_per_node", "cpus_per_task", "mem_mb", "runtime_min"):
        assert props[key]["default"] == getattr(layout, key), key


def test_eval_and_export_jobs_take_the_sites_default_memory_and_wall_time_unless_the_layout_says() -> None:
    site = {"mem_mb": 400, "runtime": 10}  # a profile's default-resources
    plain = run_layout({"layout": {"nodes": 2}})
    assert (job_resources(plain.eval, site)["mem_mb"], job_resources(plain.eval, site)["runtime"]) == (
        400,
        10,
    )
    assert (job_resources(plain.export)["mem_mb"], job_resources(plain.export)["runtime"]) == (8000, 60)
    sized = run_layout({"layout": {"export": {"mem_mb": 64000, "runtime_min": 90}, "eval": {"gpus": 1}}})
    assert (job_resources(sized.export, site)["mem_mb"], job_resources(sized.export, site)["runtime"]) == (
        64000,
        90,
    )
    assert job_resources(sized.eval, site)["gres"] == "gpu:1"
