"""Spike samples of an export: decoded to (neurons x bins) arrays of the prompt's layout, seeded, drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmrepro.data.sources import prepare_dataset
from lmrepro.data.spike_tokenizer import write_spike_tokenizer
from lmrepro.eval.samples import sample_spikes
from lmrepro.model.flavors import model_args, params_json
from lmrepro.model.llama import Transformer


def tiny_export(folder: Path, vocab_size: int) -> Path:
    torch.manual_seed(0)
    args = model_args("debug", vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
    model = Transformer(args)
    model.init_weights()
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "consolidated.pth")
    (folder / "params.json").write_text(json.dumps(params_json(args)))
    (folder / "export.json").write_text(json.dumps({"run": "t", "step": 0}))
    return folder


@pytest.mark.parametrize("mode", ["bytes", "patch"])
def test_samples_have_the_layout_and_are_seeded(tmp_path: Path, mode: str) -> None:
    spec = {"source": "synthetic", "kind": "spikes", "seed": 1, "num_train_rows": 8, "num_test_rows": 6,
            "n_fixed": 3}  # fmt: skip
    raw = tmp_path / "raw"
    prepare_dataset(spec, raw, name="pile")
    if mode == "bytes":
        tok = write_spike_tokenizer(tmp_path / "tok")
        vocab = 256
    else:
        tok = write_spike_tokenizer(tmp_path / "tok", raw=raw, patch=(1, 5), vocab_size=64)
        vocab = json.loads((tok / "spike_tokenizer.json").read_text())["vocab_size"]
    export = tiny_export(tmp_path / "export", vocab)
    options = dict(num_rows=2, prompt_bins=5, gen_bins=5, num_unconditional=1, seq_len=32, seed=3)
    a = sample_spikes(export, tok, raw, tmp_path / "a", **options)
    b = sample_spikes(export, tok, raw, tmp_path / "b", **options)
    arrays = np.load(tmp_path / "a" / "samples.npz")
    assert arrays["conditional_0_prompt"].shape == (3, 5)
    assert arrays["conditional_1_real"].shape == arrays["conditional_1_generated"].shape == (3, 5)
    assert arrays["unconditional_0"].shape == (3, 5)
    assert (tmp_path / "a" / "rasters.png").stat().st_size > 1000
    again = np.load(tmp_path / "b" / "samples.npz")
    assert all(np.array_equal(arrays[k], again[k]) for k in arrays.files) and a["samples"] == b["samples"]
    assert 0 <= a["samples"][0]["model_p_sep"] <= 1
