"""Parallel layouts on CPU/gloo reproduce the single-process losses of the same seed (fp32), and a
checkpoint saved under one layout continues under another."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import write_train_toml
from trainer_processes import TRAIN, losses, setup_run, train, trainer_env

from lmrepro.config import load_job_config
from lmrepro.train.trainer import plan_layout

pytestmark = pytest.mark.slow


def assert_losses_match(
    got: dict[int, float], ref: dict[int, float], steps: range, rel: float = 1e-4
) -> None:
    for step in steps:
        assert got[step] == pytest.approx(ref[step], rel=rel), (step, got[step], ref[step])


def test_tensor_parallel_two_ranks_then_fsdp_two_ranks(tmp_path, tiny_data, reference):
    config, step0 = setup_run(tmp_path, tiny_data, "tp", training={"steps": 24}, parallel={"tp_degree": 2})
    tp_ckpt = tmp_path / "tp" / "checkpoints" / "step-12"
    out = train(config, step0, tp_ckpt, 12, nproc=2)
    assert "tp 2" in out
    assert_losses_match(losses(tp_ckpt), losses(reference), range(1, 13))
    # Saved by TP=2, continued by FSDP over 2 ranks: DCP reshards, losses continue the reference's.
    write_train_toml(config, tmp_path / "tp", tiny_data["train_index"], training={"steps": 24})
    fsdp_ckpt = tmp_path / "tp" / "checkpoints" / "step-24"
    train(config, tp_ckpt, fsdp_ckpt, 24, nproc=2)
    assert_losses_match(losses(fsdp_ckpt), losses(reference), range(13, 25))


def test_hsdp_two_by_two_matches_single_process(tmp_path, tiny_data, reference):
    config, step0 = setup_run(
        tmp_path, tiny_data, "hsdp", training={"steps": 24}, parallel={"dp_replicate_degree": 2}
    )
    final = tmp_path / "hsdp" / "checkpoints" / "step-12"
    out = train(config, step0, final, 12, nproc=4)
    assert "dp_replicate 2 × dp_shard 2" in out
    assert_losses_match(losses(final), losses(reference), range(1, 13))


@pytest.mark.parametrize(
    "sections, world, message",
    [
        ({"model": {"flavor": "13B"}}, 1, "model.flavor = '13B' is not a flavor; valid flavors: debug"),
        ({"parallel": {"tp_degree": 3}}, 3, "tp_degree = 3 does not divide the model's n_heads = 4"),
        ({"parallel": {"dp_replicate_degree": 3}}, 4, "world size 4 is not divisible"),
        (
            {"training": {"global_batch_tokens": 96}, "data": {"seq_len": 32}},
            2,
            "not divisible by data.seq_len",
        ),
    ],
)
def test_bad_layouts_are_refused_before_any_process_group(tmp_path, tiny_data, sections, world, message):
    config = write_train_toml(tmp_path / "train.toml", tmp_path, tiny_data["train_index"], **sections)
    with pytest.raises(ValueError, match=message):
        plan_layout(load_job_config(config), world)


def test_trainer_reports_a_bad_degree_in_one_line_without_hanging(tmp_path, tiny_data):
    config, step0 = setup_run(tmp_path, tiny_data, "bad", parallel={"tp_degree": 3})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(TRAIN)]
    cmd += [
        "--config",
        str(config),
        "--resume-from",
        str(step0),
        "--save-to",
        str(tmp_path / "x"),
        "--until-step",
        "4",
    ]
    result = subprocess.run(cmd, env=trainer_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert (
        "error: world size 2 is not divisible by parallel.dp_replicate_degree × tp_degree = 1 × 3"
        in result.stderr
    )
    assert "lmrepro/train" not in result.stderr  # a one-line error from each worker, no worker traceback
