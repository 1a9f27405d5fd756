"""On a CUDA GPU (`pytest -m gpu` through the device tool): the non-finite guard of a compiled bf16 step on
the device (no host sync per step) stops before any checkpoint of the poisoned step, and a loss eval on the
GPU in bf16 gives the CPU fp32 eval's loss within 0.01 nats, recording where it ran."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import write_train_toml

from lmrepro.config import load_job_config
from lmrepro.eval.results import evaluate_loss_task
from lmrepro.train.trainer import Trainer, init_checkpoint, run_segment

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.usefixtures("restore_signal_handlers"),  # the trainer runs in process
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with the device tool)"),
]

GPU = {"training": {"steps": 8, "dtype": "bfloat16", "compile": True, "global_batch_tokens": 256}}


def _job(tmp_path, tiny_data, name: str, **sections):
    run_dir = tmp_path / name
    run_dir.mkdir()
    config = write_train_toml(run_dir / "train.toml", run_dir, tiny_data["train_index"], **GPU, **sections)
    job = load_job_config(config)
    step0 = run_dir / "checkpoints" / "step-0"
    init_checkpoint(job, step0)
    return job, step0


def test_a_nan_between_logged_steps_stops_on_the_gpu_before_its_checkpoint(tmp_path, tiny_data) -> None:
    job, step0 = _job(
        tmp_path, tiny_data, "nan", metrics={"log_every_steps": 5}, checkpoint={"interval_steps": 4}
    )
    trainer = Trainer(job, step0, step0.parent / "step-8", 8)
    assert next(trainer.model.parameters()).is_cuda
    trainer.model.norm.register_forward_hook(
        lambda module, inputs, output: (
            output * float("nan") if trainer.step == 3 and module.training else output
        )
    )
    with pytest.raises(FloatingPointError, match=r"not finite at step 3 \(seen at step 4\)"):
        trainer.train()
    assert not any((trainer.state_dir / "checkpoints").glob("step-*"))


def test_a_bf16_loss_eval_on_the_gpu_equals_the_cpu_fp32_one(tmp_path, tiny_data) -> None:
    job, step0 = _job(tmp_path, tiny_data, "eval")
    final = step0.parent / "step-8"
    assert run_segment(job, step0, final, 8) == 0
    cpu = evaluate_loss_task(
        final, tiny_data["heldout_index"].parent, "heldout", 4096, tmp_path / "cpu.json", device="cpu"
    )
    gpu = evaluate_loss_task(
        final,
        tiny_data["heldout_index"].parent,
        "heldout",
        4096,
        tmp_path / "gpu.json",
        device="auto",
        dtype="bfloat16",
    )
    recorded = json.loads((tmp_path / "gpu.json").read_text())
    assert (recorded["device"], recorded["dtype"]) == ("cuda", "bfloat16")
    assert gpu["metrics"]["loss"] == pytest.approx(cpu["metrics"]["loss"], abs=0.01)
