"""DCP checkpoint → consolidated.pth + params.json + HF folder, checked against transformers."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import write_train_toml

from lmrepro.checkpoint.dcp import load_model
from lmrepro.checkpoint.export import export_checkpoint
from lmrepro.config import load_job_config
from lmrepro.model.flavors import args_from_params_json
from lmrepro.model.llama import Transformer
from lmrepro.train.trainer import init_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("export")
    config = write_train_toml(tmp / "train.toml", tmp, tiny_data["train_index"], training={"seed": 5})
    checkpoint = tmp / "checkpoints" / "step-0"
    init_checkpoint(load_job_config(config), checkpoint)
    out = tmp / "export" / "step-0"
    export_checkpoint(checkpoint, out, tokenizer_dir=tiny_data["tokenizer"])
    return checkpoint, out


def test_hf_export_logits_match_our_model(exported, tiny_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checkpoint, out = exported
    ours, _ = load_model(checkpoint)
    hf = AutoModelForCausalLM.from_pretrained(out / "hf", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(out / "hf")
    ids = tok("the owl lives in the forest. the fox eats", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id  # the exported tokenizer adds BOS like training did
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4


def test_consolidated_pth_loads_strictly_into_our_model(exported):
    checkpoint, out = exported
    params = json.loads((out / "params.json").read_text())
    model = Transformer(args_from_params_json(params))
    state = torch.load(out / "consolidated.pth", weights_only=True)
    model.load_state_dict(state, strict=True)
    ours, _ = load_model(checkpoint)
    assert all(torch.equal(state[k], v) for k, v in ours.state_dict().items())
    info = json.loads((out / "export.json").read_text())
    assert (info["step"], info["run"]) == (0, "test")


def test_export_refuses_to_overwrite_and_leaves_no_partial_folder(exported, tiny_data):
    checkpoint, out = exported
    with pytest.raises(FileExistsError):
        export_checkpoint(checkpoint, out, tokenizer_dir=tiny_data["tokenizer"])
    assert (out / "hf" / "model.safetensors").is_file()  # the existing export is intact


def test_export_of_a_folder_that_is_not_a_checkpoint_names_it(tmp_path, tiny_data):
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(FileNotFoundError, match="not-a-checkpoint"):
        export_checkpoint(
            tmp_path / "not-a-checkpoint", tmp_path / "out", tokenizer_dir=tiny_data["tokenizer"]
        )
    assert not (tmp_path / "out").exists()


def test_mlm_export_records_objective_and_writes_no_hf_folder(tmp_path, tiny_data):
    """A bidirectional model: params.json says so, and there is no hf/ that would load as a causal model,
    only the one-line reason."""
    from lmrepro.checkpoint.export import NO_HF_FILE

    mlm = {"objective": "mlm", "mlm": {"mask_token_id": 2, "never_mask_ids": [0, 1, 2]}}
    overrides = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128, "causal": False}
    config = write_train_toml(
        tmp_path / "train.toml",
        tmp_path,
        tiny_data["train_index"],
        model={"overrides": overrides},
        training=mlm,
    )
    checkpoint = tmp_path / "checkpoints" / "step-0"
    init_checkpoint(load_job_config(config), checkpoint)
    out = tmp_path / "export" / "step-0"
    record = export_checkpoint(checkpoint, out, tokenizer_dir=tiny_data["tokenizer"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["consolidated.pth", "params.json", "export.json", NO_HF_FILE]
    )
    assert len((out / NO_HF_FILE).read_text().splitlines()) == 1
    params = json.loads((out / "params.json").read_text())
    assert (params["objective"], params["attention"], params["causal"]) == ("mlm", "bidirectional", False)
    assert params["mlm"] == {
        "mask_ratio": 0.3,
        "mask_token_id": 2,
        "never_mask_ids": [0, 1, 2],
        "replacement": "all_mask",
    }
    assert (record["objective"], record["attention"], record["hf"]) == ("mlm", "bidirectional", None)
    model = Transformer(args_from_params_json(params))  # the .pth loads strictly as a bidirectional model
    model.load_state_dict(torch.load(out / "consolidated.pth", weights_only=True), strict=True)
    assert not model.args.causal


def test_causal_export_records_causal_attention(exported):
    _, out = exported
    params = json.loads((out / "params.json").read_text())
    assert (params["objective"], params["attention"]) == ("causal", "causal")


def _meta_rule_ffn_dim(params: dict) -> int:
    """Meta's reference FeedForward sizing (llama/model.py), as a reader of params.json applies it."""
    hidden = int(2 * 4 * params["dim"] / 3)
    if params.get("ffn_dim_multiplier") is not None:
        hidden = int(params["ffn_dim_multiplier"] * hidden)
    return params["multiple_of"] * ((hidden + params["multiple_of"] - 1) // params["multiple_of"])


def test_params_json_sizes_the_ffn_by_meta_rule():
    from lmrepro.model.flavors import FLAVORS, meta_ffn_sizing, params_json

    assert meta_ffn_sizing(4096, 14336) == (1024, 1.3)  # Llama 3 8B, as published
    assert meta_ffn_sizing(2048, 8192) == (256, 1.5)  # Llama 3.2 1B (not 4096 / 1.3, which also fits)
    assert meta_ffn_sizing(4096, 11008) == (256, None)  # Llama 2 7B
    assert meta_ffn_sizing(64, 128) == (128, 0.7)  # a shape of our own: a derived multiplier
    for args in (FLAVORS["debug"], FLAVORS["2B"], FLAVORS["llama3.2-1B"]):
        params = params_json(args)
        assert _meta_rule_ffn_dim(params) == args.ffn_dim
    params = params_json(dataclasses.replace(FLAVORS["debug"], dim=8192, n_heads=64, ffn_dim=12345))
    assert "multiple_of" not in params and "ffn_dim_multiplier" not in params  # no pair gives 12345
    assert params["ffn_dim"] == 12345


def test_torchtune_meta_checkpointer_loads_the_export_with_our_logits(exported, tmp_path):
    """frontier-torchtitan evaluates consolidated.pth with torchtune's FullModelMetaCheckpointer: built
    from params.json by Meta's sizing rule, torchtune's Llama 3 gives our logits."""
    try:  # 0.6 imports torchao.dtypes.nf4tensor at import time, which torchao 0.12+ no longer has
        from torchtune.models.llama3 import llama3
        from torchtune.training import FullModelMetaCheckpointer
    except ImportError as e:
        pytest.skip(f"torchtune (the eval extra; torchao <= 0.11) does not import here: {e}")

    checkpoint, out = exported
    params = json.loads((out / "params.json").read_text())
    assert json.loads((out / "export.json").read_text())["meta_ffn_sizing"] is True
    checkpointer = FullModelMetaCheckpointer(
        checkpoint_dir=str(out),
        checkpoint_files=["consolidated.pth"],
        model_type="LLAMA3",
        output_dir=str(tmp_path),
    )
    state = checkpointer.load_checkpoint()["model"]
    tune = llama3(
        vocab_size=params["vocab_size"],
        num_layers=params["n_layers"],
        num_heads=params["n_heads"],
        num_kv_heads=params["n_kv_heads"],
        embed_dim=params["dim"],
        max_seq_len=params["max_seq_len"],
        intermediate_dim=_meta_rule_ffn_dim(params),
        norm_eps=params["norm_eps"],
        rope_base=params["rope_theta"],
    ).eval()
    tune.load_state_dict(state, strict=True)
    ours, _ = load_model(checkpoint)
    ids = torch.randint(0, params["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (ours(ids) - tune(ids)).abs().max().item()
    assert diff <= 1e-5
