"""A transformers causal LM (tiny GPT-Neo, config written by transformers) through the real trainer: the
losses of a plain transformers + torch.optim.AdamW loop, exact resume after a kill, FSDP on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
from helpers import write_tiny_hf_config, write_train_toml
from trainer_processes import (
    init_checkpoint,
    kill_tree,
    launch,
    losses,
    train,
    wait_for_checkpoint,
    weights,
)

from lmrepro.config import load_job_config
from lmrepro.data.loader import build_loader
from lmrepro.train.schedule import lr_at

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

STEPS = 20


@pytest.fixture(scope="module")
def neo_config(tmp_path_factory):
    """A tiny GPT-Neo (the seed's gpt-neo-125m layout: alternating global/local attention, tied embeddings)
    as transformers writes it."""
    folder = tmp_path_factory.mktemp("neo") / "config"
    return write_tiny_hf_config(folder, "gpt_neo")


def hf_run(tmp_path, tiny_data, neo_config, name, **sections):
    run_dir = tmp_path / name
    run_dir.mkdir()
    model = {"overrides": {}, "hf": {"config": str(neo_config)}}
    config = write_train_toml(
        run_dir / "train.toml",
        run_dir,
        tiny_data["train_index"],
        model=model,
        training={"steps": STEPS, "global_batch_tokens": 256},
        **sections,
    )
    step0 = run_dir / "checkpoints" / "step-0"
    init_checkpoint(config, step0)
    return config, step0


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory, tiny_data, neo_config):
    tmp = tmp_path_factory.mktemp("hf_reference")
    config, step0 = hf_run(tmp, tiny_data, neo_config, "ref")
    final = tmp / "ref" / "checkpoints" / f"step-{STEPS}"
    out = train(config, step0, final, STEPS)
    assert "model hf gpt_neo" in out
    return config, step0, final


def plain_loop_losses(config, step0) -> list[float]:
    """The same transformers model, torch.optim.AdamW (no decay on 1-D weights, as the seed's
    run_clm_no_trainer: biases and LayerNorm weights), the same lr schedule, clipping and batches."""
    job = load_job_config(config)
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.from_pretrained(job.model.hf.config, vocab_size=job.model.vocab_size)
    )
    model.load_state_dict({k: v for k, v in weights(step0).items()}, strict=True)
    opt = job.optimizer
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=opt.lr,
        betas=(opt.beta1, opt.beta2),
        eps=opt.eps,
    )
    batch = job.training.global_batch_tokens // job.data.seq_len
    loader = build_loader(job.data, global_batch_sequences=batch, dp_rank=0, dp_size=1, vocab_size=300)
    out = []
    try:
        for step in range(1, STEPS + 1):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, opt.lr, job.training.steps, job.schedule)
            inputs, targets = loader.next_batch()
            window = torch.cat([inputs, targets[:, -1:]], dim=1)  # the window the targets shift
            loss = model(input_ids=window, labels=window).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
            optimizer.step()
            optimizer.zero_grad()
            out.append(loss.item())
    finally:
        loader.close()
    return out


def test_trainer_equals_a_plain_transformers_loop(hf_reference):
    config, step0, final = hf_reference
    ours = losses(final)
    plain = plain_loop_losses(config, step0)
    for step in range(1, STEPS + 1):
        assert ours[step] == pytest.approx(plain[step - 1], abs=1e-5), step
    assert ours[STEPS] < ours[1] - 0.3  # it learns


def test_killed_hf_segment_resumes_bitwise(tmp_path, tiny_data, neo_config, hf_reference):
    _, _, reference = hf_reference
    config, step0 = hf_run(tmp_path, tiny_data, neo_config, "killed")
    final = tmp_path / "killed" / "checkpoints" / f"step-{STEPS}"
    proc = launch(config, step0, final, STEPS)
    wait_for_checkpoint(tmp_path / "killed" / "state" / "checkpoints" / "step-8", proc)
    kill_tree(proc)
    out = train(config, step0, final, STEPS)
    assert "resuming from rolling checkpoint" in out
    assert losses(final) == losses(reference)
    ref_w, got_w = weights(reference), weights(final)
    assert ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)


def test_hf_fsdp_two_ranks_match_single_process(tmp_path, tiny_data, neo_config, hf_reference):
    _, _, reference = hf_reference
    config, step0 = hf_run(tmp_path, tiny_data, neo_config, "fsdp")
    half = tmp_path / "fsdp" / "checkpoints" / "step-10"
    out = train(config, step0, half, 10, nproc=2)
    assert "dp_shard 2" in out
    ref = losses(reference)
    for step, loss in losses(half).items():
        assert loss == pytest.approx(ref[step], rel=1e-4), step
    # saved by 2 FSDP ranks, continued by 1 process; the tied lm_head stays tied
    final = tmp_path / "fsdp" / "checkpoints" / f"step-{STEPS}"
    train(config, half, final, STEPS, nproc=1)
    for step, loss in losses(final).items():
        assert loss == pytest.approx(ref[step], rel=1e-4), step
    w = weights(final)
    assert torch.equal(w["lm_head.weight"], w["transformer.wte.weight"])
