"""Unit tests for lmrepro.checkpoint.hf: logits must match transformers' LlamaForCausalLM both ways."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from tiny_llama import ATOL, CASES, SCALING, make_hf_model, perturb_, random_tokens, tiny_args  # noqa: E402

from lmrepro.checkpoint.hf import (  # noqa: E402
    args_from_hf_config,
    from_hf_state_dict,
    hf_config,
    load_hf_state_dict,
    save_hf_folder,
    to_hf_state_dict,
)
from lmrepro.model.llama import Transformer  # noqa: E402

transformers = pytest.importorskip("transformers")


def hf_logits(model, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=toks).logits


def our_logits(model: Transformer, toks: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(toks)


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_ours_logits_match(case: str, tmp_path) -> None:
    args = tiny_args(**CASES[case])
    hf_model = make_hf_model(args, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert ("lm_head.weight" in hf_model.state_dict()) or args.tie_embeddings

    hf_sd, loaded_args = load_hf_state_dict(tmp_path)
    assert loaded_args == args, written
    model = Transformer(loaded_args).eval()
    model.load_state_dict(from_hf_state_dict(hf_sd, loaded_args))
    if args.tie_embeddings:
        assert model.output.weight is model.tok_embeddings.weight

    toks = random_tokens()
    diff = (our_logits(model, toks) - hf_logits(hf_model, toks)).abs().max().item()
    print(f"{case}: HF -> ours max |logit diff| = {diff:.2e}")
    assert diff <= ATOL


@pytest.mark.parametrize("case", list(CASES))
def test_ours_to_hf_logits_match(case: str, tmp_path) -> None:
    args = tiny_args(**CASES[case])
    torch.manual_seed(0)
    model = Transformer(args).eval()
    perturb_(model, 1)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    (tok_dir / "special_tokens_map.json").write_text("{}")
    (tok_dir / "config.json").write_text('{"must": "not overwrite the model config"}')

    out = tmp_path / "hf"
    save_hf_folder(model.state_dict(), args, out, tokenizer_dir=tok_dir, bos_token_id=1, eos_token_id=2)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder renamed away
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf_model.config.tie_word_embeddings == args.tie_embeddings
    assert hf_model.config.num_key_value_heads == args.n_kv_heads
    toks = random_tokens()
    diff = (our_logits(model, toks) - hf_logits(hf_model, toks)).abs().max().item()
    print(f"{case}: ours -> HF max |logit diff| = {diff:.2e}")
    assert diff <= ATOL


def test_state_dict_round_trip_is_exact() -> None:
    for kw in CASES.values():
        args = tiny_args(**kw)
        sd = Transformer(args).state_dict()
        back = from_hf_state_dict(to_hf_state_dict(sd, args), args)
        assert back.keys() == sd.keys()
        for k in sd:
            torch.testing.assert_close(back[k], sd[k], rtol=0, atol=0, msg=k)


def test_config_round_trip_and_4x_style(tmp_path) -> None:
    args = tiny_args(n_heads=4, n_kv_heads=2, rope_scaling=SCALING, tie_embeddings=True, norm_eps=1e-6)
    cfg = hf_config(args, bos_token_id=1, eos_token_id=2)
    assert args_from_hf_config(json.loads(json.dumps(cfg))) == args
    # transformers 5 reads our file as intended.
    parsed = transformers.LlamaConfig.from_dict(cfg)
    assert parsed.rope_parameters["rope_type"] == "llama3"
    assert parsed.rope_parameters["rope_theta"] == 10000.0
    assert parsed.rope_parameters["factor"] == 8.0
    # A 4.x-style config (rope_theta + rope_scaling with the old "type" key, no rope_parameters).
    old = {k: v for k, v in cfg.items() if k != "rope_parameters"}
    old["rope_scaling"] = {**cfg["rope_scaling"], "type": "llama3"}
    del old["rope_scaling"]["rope_type"]
    assert args_from_hf_config(old) == args
    # A 5.x-style config as transformers itself writes it (theta only inside rope_parameters).
    new = {k: v for k, v in cfg.items() if k not in ("rope_scaling", "rope_theta")}
    assert args_from_hf_config(new) == args


def test_sharded_save_loads_in_transformers(tmp_path) -> None:
    args = tiny_args(n_heads=4, n_kv_heads=2)
    torch.manual_seed(0)
    model = Transformer(args).eval()
    perturb_(model, 2)
    out = tmp_path / "hf"
    save_hf_folder(
        model.state_dict(),
        args,
        out,
        tokenizer_dir=None,
        bos_token_id=1,
        eos_token_id=2,
        max_shard_bytes=40_000,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists()

    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    toks = random_tokens()
    assert (our_logits(model, toks) - hf_logits(hf_model, toks)).abs().max().item() <= ATOL
    # And our loader reads the shards back bit-exactly.
    hf_sd, loaded = load_hf_state_dict(out)
    back = from_hf_state_dict(hf_sd, loaded)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back[k], v, rtol=0, atol=0, msg=k)


def test_bf16_export(tmp_path) -> None:
    args = tiny_args()
    model = Transformer(args)
    out = tmp_path / "hf"
    save_hf_folder(
        model.state_dict(),
        args,
        out,
        tokenizer_dir=None,
        bos_token_id=1,
        eos_token_id=2,
        dtype=torch.bfloat16,
    )
    hf_sd, _ = load_hf_state_dict(out)
    assert all(t.dtype == torch.bfloat16 for t in hf_sd.values())
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"


def test_sharded_hf_checkpoint_loads(tmp_path) -> None:
    args = tiny_args(n_heads=4, n_kv_heads=2)
    hf_model = make_hf_model(args, tmp_path, max_shard_size="30KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    hf_sd, loaded = load_hf_state_dict(tmp_path)
    model = Transformer(loaded).eval()
    model.load_state_dict(from_hf_state_dict(hf_sd, loaded))
    toks = random_tokens()
    assert (our_logits(model, toks) - hf_logits(hf_model, toks)).abs().max().item() <= ATOL


def test_non_llama_config_is_rejected() -> None:
    cfg = hf_config(tiny_args(), bos_token_id=1, eos_token_id=2)
    with pytest.raises(ValueError, match="model_type"):
        args_from_hf_config({**cfg, "model_type": "mistral"})
    with pytest.raises(ValueError, match="intermediate_size"):
        args_from_hf_config({k: v for k, v in cfg.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="rope_type"):
        args_from_hf_config({**cfg, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError, match="causal"):
        hf_config(tiny_args(causal=False), bos_token_id=1, eos_token_id=2)


def test_missing_files(tmp_path) -> None:
    args = tiny_args()
    out = tmp_path / "hf"
    save_hf_folder(
        Transformer(args).state_dict(),
        args,
        out,
        tokenizer_dir=None,
        bos_token_id=1,
        eos_token_id=2,
        max_shard_bytes=40_000,
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (out / victim).unlink()
    with pytest.raises(FileNotFoundError, match=victim):
        load_hf_state_dict(out)
    (out / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_state_dict(out)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        save_hf_folder(
            {}, args, tmp_path / "x", tokenizer_dir=tmp_path / "nowhere", bos_token_id=1, eos_token_id=2
        )


def test_bad_state_dict_keys() -> None:
    args = tiny_args()
    sd = Transformer(args).state_dict()
    with pytest.raises(ValueError, match="_orig_mod"):
        to_hf_state_dict({"_orig_mod." + k: v for k, v in sd.items()}, args)
    del sd["layers.1.feed_forward.w3.weight"]
    with pytest.raises(ValueError, match="up_proj"):
        to_hf_state_dict(sd, args)
    hf_sd = to_hf_state_dict(Transformer(args).state_dict(), args)
    del hf_sd["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match="w3"):
        from_hf_state_dict(hf_sd, args)


def test_published_llama_configs() -> None:
    """Meta's Llama-3.1-8B config.json (4.x style) maps onto our flavor, and we write its rope fields."""
    from lmrepro.model.flavors import model_args

    published = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "hidden_size": 4096,
        "initializer_range": 0.02,
        "intermediate_size": 14336,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    }
    args = model_args("llama3.1-8B", 128256)
    assert args_from_hf_config(published) == args
    ours = hf_config(args, bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16")
    for key in ("rope_scaling", "rope_theta", "intermediate_size", "num_key_value_heads", "rms_norm_eps"):
        assert ours[key] == published[key], key
    tied = hf_config(model_args("llama3.2-1B", 128256), bos_token_id=1, eos_token_id=2)
    assert tied["tie_word_embeddings"] and tied["rope_scaling"]["factor"] == 32.0
