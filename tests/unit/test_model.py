"""Unit tests for lmrepro.model.llama and lmrepro.model.flavors (tiny models, CPU, fast)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from helpers import LLAMA_31_8B_PARAMS

from lmrepro.model.flavors import FLAVORS, args_from_params_json, meta_ffn_dim, model_args, params_json
from lmrepro.model.llama import ModelArgs, RopeScaling, Transformer, flops_per_token

VOCAB = 97


def tiny_args(**overrides) -> ModelArgs:
    base = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, ffn_dim=64, max_seq_len=32)
    return ModelArgs(**{**base, **overrides})


def build(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(args).eval()


def tokens(b: int = 2, s: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (b, s), generator=torch.Generator().manual_seed(seed))


# -------------------------------------------------------------------------------------------- model


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_output_shapes_gqa_and_mha(n_kv_heads: int) -> None:
    args = tiny_args(n_kv_heads=n_kv_heads)
    model = build(args)
    attn = model.layers["0"].attention
    assert attn.wq.weight.shape == (4 * 8, 32)
    assert attn.wk.weight.shape == (n_kv_heads * 8, 32)
    assert attn.wv.weight.shape == (n_kv_heads * 8, 32)
    assert attn.wo.weight.shape == (32, 4 * 8)
    with torch.no_grad():
        logits = model(tokens(2, 16))
    assert logits.shape == (2, 16, VOCAB)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_parameter_names_match_meta_torchtitan() -> None:
    model = build(tiny_args(n_layers=1))
    assert set(model.state_dict()) == {
        "tok_embeddings.weight",
        "layers.0.attention.wq.weight",
        "layers.0.attention.wk.weight",
        "layers.0.attention.wv.weight",
        "layers.0.attention.wo.weight",
        "layers.0.feed_forward.w1.weight",
        "layers.0.feed_forward.w2.weight",
        "layers.0.feed_forward.w3.weight",
        "layers.0.attention_norm.weight",
        "layers.0.ffn_norm.weight",
        "norm.weight",
        "output.weight",
    }


def test_short_sequence_and_too_long_sequence() -> None:
    model = build(tiny_args(max_seq_len=32))
    with torch.no_grad():
        assert model(tokens(1, 1)).shape == (1, 1, VOCAB)
        assert model(tokens(1, 32)).shape == (1, 32, VOCAB)
        with pytest.raises(ValueError, match="max_seq_len"):
            model(tokens(1, 33))


def test_causal_mask() -> None:
    model = build(tiny_args())
    x = tokens(1, 16)
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=0)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_bidirectional_flag() -> None:
    model = build(tiny_args(causal=False))
    x = tokens(1, 16)
    y = x.clone()
    y[0, 10] = (y[0, 10] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(x), model(y)
    assert not torch.allclose(a[:, :10], b[:, :10])  # earlier positions see the later token


def test_freqs_cis_not_in_state_dict_and_rope_matters() -> None:
    model = build(tiny_args())
    assert "freqs_cis" not in model.state_dict()
    assert model.freqs_cis.dtype == torch.complex64 and model.freqs_cis.shape == (32, 4)
    # Without positions, causal attention at the last token sees its prefix as a set, so swapping two
    # earlier tokens would not change the last logits; with RoPE it must.
    with torch.no_grad():
        a = model(torch.tensor([[3, 4, 5, 6]]))[0, -1]
        b = model(torch.tensor([[4, 3, 5, 6]]))[0, -1]
    assert not torch.allclose(a, b)


def test_rope_scaling_changes_only_low_frequencies() -> None:
    plain = build(tiny_args(rope_theta=10000.0))
    scaled = build(tiny_args(rope_theta=10000.0, rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64)))
    freq_plain, freq_scaled = plain.freqs_cis[1].angle(), scaled.freqs_cis[1].angle()  # angle at pos 1
    # head_dim 8: freqs 1, 0.1, 0.01, 0.001 = wavelengths 6.3, 63, 628, 6283 vs. the band [64/4, 64/1].
    torch.testing.assert_close(freq_scaled[0], freq_plain[0])  # short wavelength: untouched
    smooth = (64 / (2 * math.pi / 0.1) - 1) / (4 - 1)  # in the band: blended
    torch.testing.assert_close(freq_scaled[1], torch.tensor((1 - smooth) * 0.1 / 8 + smooth * 0.1))
    torch.testing.assert_close(freq_scaled[2:], freq_plain[2:] / 8)  # long wavelengths: interpolated


def test_rope_scaling_accepts_dict() -> None:
    d = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    assert tiny_args(rope_scaling=d).rope_scaling == RopeScaling(**d)
    with pytest.raises(ValueError, match="rope_scaling"):
        tiny_args(rope_scaling={"factor": 8.0})


def test_meta_device_init_is_deterministic() -> None:
    args = tiny_args()
    params = []
    for _ in range(2):
        with torch.device("meta"):
            model = Transformer(args)
        assert model.tok_embeddings.weight.is_meta
        model.to_empty(device="cpu")
        torch.manual_seed(1234)
        model.init_weights()
        params.append({k: v.clone() for k, v in model.state_dict().items()})
        assert all(torch.isfinite(v).all() for v in params[-1].values())
        torch.testing.assert_close(model.freqs_cis, build(args).freqs_cis, rtol=0, atol=0)
        assert model.norm.weight.eq(1).all()
    for k in params[0]:
        torch.testing.assert_close(params[0][k], params[1][k], rtol=0, atol=0, msg=k)
    # Same seed on a CPU-built model gives the same weights too.
    cpu = Transformer(args)
    torch.manual_seed(1234)
    cpu.init_weights()
    for k, v in cpu.state_dict().items():
        torch.testing.assert_close(v, params[0][k], rtol=0, atol=0, msg=k)


def test_init_stds() -> None:
    args = tiny_args(dim=256, n_heads=4, n_kv_heads=4, ffn_dim=512, n_layers=4, vocab_size=1000)
    model = build(args)
    assert abs(model.tok_embeddings.weight.std().item() - 0.02) < 0.002
    assert abs(model.output.weight.std().item() - 256**-0.5) < 0.1 * 256**-0.5
    wo0, wo3 = model.layers["0"].attention.wo.weight, model.layers["3"].attention.wo.weight
    assert wo3.std() < wo0.std()  # depth-scaled
    assert wo0.abs().max() <= 3 * 0.02 / 2**0.5 + 1e-6  # truncated at 3 std


def test_tied_embeddings_survive_meta_init() -> None:
    args = tiny_args(tie_embeddings=True)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    model.init_weights()
    assert model.output.weight is model.tok_embeddings.weight
    sd = model.state_dict()
    assert "output.weight" in sd and sd["output.weight"].data_ptr() == sd["tok_embeddings.weight"].data_ptr()
    untied = build(tiny_args())
    assert model.num_params() == untied.num_params() - VOCAB * 32
    # Loading a state dict with both keys keeps the tie.
    model.load_state_dict(build(args, seed=3).state_dict())
    assert model.output.weight is model.tok_embeddings.weight


def test_dtype_cast_guard() -> None:
    model = build(tiny_args())
    model.bfloat16()  # keeps the complex buffer
    assert model.freqs_cis.dtype == torch.complex64
    with torch.no_grad():
        assert model(tokens(1, 4)).dtype == torch.bfloat16
    bad = build(tiny_args())
    with pytest.warns(UserWarning):
        bad.to(torch.bfloat16)  # casts the complex buffer to real: must not run silently wrong
    with pytest.raises(ValueError, match="freqs_cis"):
        bad(tokens(1, 4))


def test_residual_stream_in_autocast_dtype() -> None:
    """Under autocast the blocks see bf16 hidden states, as under FSDP's bf16 parameters; fp32 otherwise."""
    model = build(tiny_args())
    seen: list[torch.dtype] = []
    for layer in model.layers.values():
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.no_grad():
        model(tokens(1, 4))
        assert seen == [torch.float32, torch.float32]
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens(1, 4))
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert torch.isfinite(logits.float()).all()


def test_num_params_and_flops() -> None:
    args = tiny_args()
    model = build(args)
    per_layer = 32 * 32 * 2 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32
    expected = VOCAB * 32 * 2 + 2 * per_layer + 32
    assert model.num_params() == expected
    assert model.num_params(exclude_embeddings=True) == expected - VOCAB * 32
    non_emb = model.num_params(exclude_embeddings=True)
    assert flops_per_token(args, 16) == 6 * non_emb + 12 * 2 * 32 * 16
    # Tied: the output matmul still costs FLOPs.
    assert flops_per_token(dataclasses.replace(args, tie_embeddings=True), 16) == flops_per_token(args, 16)
    # 7B-class sanity: ~6 * 7e9 + attention term.
    big = model_args("7B", 128256)
    assert 4.0e10 < flops_per_token(big, 4096) < 6.0e10


def test_bad_args_raise_value_error() -> None:
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny_args(n_kv_heads=3)
    with pytest.raises(ValueError, match="ffn_dim"):
        ModelArgs(dim=32, n_layers=1, n_heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(tiny_args(vocab_size=-1))


# ------------------------------------------------------------------------------------------ flavors


def test_flavors() -> None:
    assert {"debug", "250M", "870M", "2B", "5B", "7B", "1B", "llama3.2-1B", "llama3.1-8B"} <= set(FLAVORS)
    assert all(a.vocab_size == -1 for a in FLAVORS.values())
    args = model_args("debug", 1000, max_seq_len=128)
    assert args.vocab_size == 1000 and args.max_seq_len == 128 and args.dim == 128
    assert FLAVORS["debug"].vocab_size == -1 and FLAVORS["debug"].max_seq_len == 512  # not mutated
    assert model_args("llama3.2-1B", 128256).tie_embeddings
    with torch.device("meta"):  # real sizes build (no memory on meta)
        n = Transformer(model_args("llama3.1-8B", 128256)).num_params()
    assert n == 8_030_261_248  # Llama-3.1-8B's published parameter count
    with torch.device("meta"):
        n = Transformer(model_args("llama3.2-1B", 128256)).num_params()
    assert n == 1_235_814_400  # Llama-3.2-1B


def test_unknown_flavor_and_override() -> None:
    with pytest.raises(ValueError, match="nope") as e:
        model_args("nope", 100)
    for name in FLAVORS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="n_head") as e:
        model_args("debug", 100, n_head=3)
    assert "n_heads" in str(e.value)


@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_params_json_round_trip(flavor: str) -> None:
    args = model_args(flavor, 32000)
    d = json.loads(json.dumps(params_json(args)))
    assert args_from_params_json(d) == args
    assert d["use_scaled_rope"] == (args.rope_scaling is not None)


def test_params_json_round_trip_variants() -> None:
    args = tiny_args(
        causal=False, tie_embeddings=True, norm_eps=1e-6, rope_scaling=RopeScaling(32, 1, 4, 8192)
    )
    assert args_from_params_json(json.loads(json.dumps(params_json(args)))) == args


def test_meta_params_json_llama31_8b() -> None:
    meta = dict(LLAMA_31_8B_PARAMS)
    args = args_from_params_json(meta)
    assert args.ffn_dim == 14336
    expected = model_args("llama3.1-8B", 128256)
    assert dataclasses.replace(args, max_seq_len=expected.max_seq_len) == expected
    # Llama-3.2-1B's params.json: multiplier 1.5, multiple_of 256 -> 8192.
    assert meta_ffn_dim(2048, 256, 1.5) == 8192
    # Llama-2-7B: no multiplier -> 11008.
    assert meta_ffn_dim(4096, 256) == 11008
    with pytest.raises(ValueError, match="n_layers"):
        args_from_params_json({"dim": 64, "n_heads": 4})


@pytest.mark.parametrize(
    ("flavor", "non_embedding_millions"),
    [("250M", 252), ("870M", 872), ("2B", 2040), ("5B", 3500), ("7B", 6980), ("1B", 872)],
)
def test_seed_flavors_match_the_seeds_sizes(flavor: str, non_embedding_millions: int) -> None:
    """gpt-neuro-arch's table (seed-systems.md §1.6) and torchtitan's llama3 1B, within 1%."""
    args = model_args(flavor, 256)
    with torch.device("meta"):
        n = Transformer(args).num_params(exclude_embeddings=True)
    assert abs(n / 1e6 - non_embedding_millions) / non_embedding_millions < 0.01
    assert args.rope_theta == (500000.0 if flavor == "1B" else 10000.0)
    assert args.rope_scaling is None and not args.tie_embeddings
