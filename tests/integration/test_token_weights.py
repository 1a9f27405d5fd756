"""Token-weighted training through the real trainer: the weighted loss (and the weights' gradients) are the
same for 4 micro-batches and 1 and for 2 FSDP ranks and 1 (fp32), and both losses are logged."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_processes import setup_run, train

pytestmark = pytest.mark.slow


def rows(checkpoint) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (checkpoint / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "w.pt"
    torch.save(torch.rand(300, generator=torch.Generator().manual_seed(0)) * 5 + 0.1, path)
    return path


def test_weighted_loss_is_the_same_for_gas_4_and_1_and_2_ranks_and_1(tmp_path, tiny_data, weights_file):
    sections = {"training": {"steps": 6, "token_weights": str(weights_file)}}
    results = {}
    for name, micro, nproc in (("gas1", 0, 1), ("gas4", 2, 1), ("dp2", 0, 2)):
        extra = {"training": {**sections["training"], "micro_batch_sequences": micro}}
        config, step0 = setup_run(tmp_path, tiny_data, name, **extra)
        final = tmp_path / name / "checkpoints" / "step-6"
        out = train(config, step0, final, 6, nproc=nproc)
        assert ("gradient accumulation 4" in out) == (name == "gas4"), out
        results[name] = rows(final)
    ref = results["gas1"]
    assert all(ref[s]["weighted_loss"] > 0 and ref[s]["loss"] > 0 for s in ref)
    assert ref[1]["weighted_loss"] != pytest.approx(ref[1]["loss"], rel=1e-3)  # the weights do something
    for name in ("gas4", "dp2"):
        for step in range(1, 7):
            for key in ("weighted_loss", "loss", "grad_norm"):
                assert results[name][step][key] == pytest.approx(ref[step][key], rel=1e-5), (name, step, key)
