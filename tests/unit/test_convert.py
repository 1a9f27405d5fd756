"""Base checkpoints → DCP → consolidated.pth / HF, checked against transformers' LlamaForCausalLM.

Sources are real files: a tiny random LlamaForCausalLM saved by transformers (sharded), and Meta-format
files built from the same weights (one file, or split over two model-parallel files as Meta splits them).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_llama
import torch
import yaml
from helpers import REPO, write_train_toml
from tiny_llama import ATOL, CASES, random_tokens, tiny_args

from lmrepro.checkpoint import convert
from lmrepro.checkpoint.convert import CONVERSION, convert_to_dcp
from lmrepro.checkpoint.dcp import is_complete, load_model, read_checkpoint_info
from lmrepro.checkpoint.export import dcp_to_hf, export_checkpoint, upload_hf_folder
from lmrepro.checkpoint.hf import from_hf_state_dict
from lmrepro.checkpoint.init_base import INIT_RECORD
from lmrepro.config import load_job_config
from lmrepro.model.flavors import params_json
from lmrepro.model.llama import ModelArgs, Transformer
from lmrepro.train.trainer import init_checkpoint
from lmrepro.workflow import check_config

transformers = pytest.importorskip("transformers")

# Meta's model-parallel layout (tok_embeddings: dim 1 in Llama 2, dim 0 in Llama 3).
META_SPLIT = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}


def make_hf_model(args: ModelArgs, path: Path, seed: int = 0, max_shard_size: str = "30KB"):
    """Sharded by transformers' own save_pretrained, so the index + several files path is exercised."""
    return tiny_llama.make_hf_model(args, path, seed, max_shard_size)


def write_meta_folder(
    hf_model, args: ModelArgs, path: Path, num_files: int, emb_dim: int, params: dict
) -> None:
    """consolidated.NN.pth as Meta writes them: our names, interleaved RoPE, split per model-parallel rank."""
    ours = from_hf_state_dict(dict(hf_model.state_dict()), args)  # tied: output.weight is the embedding
    path.mkdir(parents=True)
    files: list[dict[str, torch.Tensor]] = [{} for _ in range(num_files)]
    for key, value in ours.items():
        name = key.split(".")[-2]
        dim = emb_dim if name == "tok_embeddings" else META_SPLIT.get(name)
        pieces = [value] * num_files if dim is None else list(value.chunk(num_files, dim=dim))
        for f, piece in zip(files, pieces, strict=True):
            f[key] = piece.clone()
    files[0]["rope.freqs"] = torch.zeros(args.head_dim // 2)  # Llama 2 saved its RoPE table
    for i, f in enumerate(files):
        f.setdefault("rope.freqs", files[0]["rope.freqs"])
        torch.save(f, path / f"consolidated.{i:02d}.pth")
    (path / "params.json").write_text(json.dumps(params))


def max_diff(ours: Transformer, hf_model, toks: torch.Tensor) -> float:
    with torch.no_grad():
        return (ours(toks) - hf_model(input_ids=toks).logits).abs().max().item()


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("case", list(CASES))
def test_hf_to_dcp_to_hf_matches_transformers(case: str, tmp_path: Path) -> None:
    args = tiny_args(**CASES[case])
    hf_model = make_hf_model(args, tmp_path / "src")
    assert (tmp_path / "src" / "model.safetensors.index.json").is_file()  # really sharded

    record = convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    ours, _ = load_model(tmp_path / "dcp")
    assert ours.args == args
    assert max_diff(ours, hf_model, random_tokens()) <= ATOL
    assert record["missing"] == {} and len(record["reshaped"]) == 2 * args.n_layers
    assert record == json.loads((tmp_path / "dcp" / CONVERSION).read_text())

    dcp_to_hf(tmp_path / "dcp", tmp_path / "hf", max_shard_bytes=40_000)
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 2
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert back.config.tie_word_embeddings == args.tie_embeddings
    assert (back.config.bos_token_id, back.config.eos_token_id) == (1, 2)  # recorded from the source
    assert max_diff(ours, back, random_tokens()) <= ATOL
    for key, value in hf_model.state_dict().items():  # and bit-exact, tensor by tensor
        assert torch.equal(back.state_dict()[key], value), key


@pytest.mark.parametrize("case", ["gqa", "gqa-scaled", "mha-scaled-tied"])
@pytest.mark.parametrize(("num_files", "emb_dim"), [(1, 0), (2, 0), (2, 1)])
def test_meta_to_dcp_matches_transformers(case: str, num_files: int, emb_dim: int, tmp_path: Path) -> None:
    args = tiny_args(**CASES[case])
    hf_model = make_hf_model(args, tmp_path / "hf")
    write_meta_folder(hf_model, args, tmp_path / "meta", num_files, emb_dim, params_json(args))
    record = convert_to_dcp("meta", tmp_path / "meta", tmp_path / "dcp")
    ours, _ = load_model(tmp_path / "dcp")
    assert ours.args == args
    assert max_diff(ours, hf_model, random_tokens()) <= ATOL
    assert "rope.freqs" in record["unexpected"]
    assert ("output.weight" in record["unexpected"]) == args.tie_embeddings  # Meta keeps the copy
    if num_files > 1:
        assert "concatenated along dim 1" in record["reshaped"]["layers.0.attention.wo.weight"]
        assert f"along dim {emb_dim}" in record["reshaped"]["tok_embeddings.weight"]


def test_meta_native_params_json(tmp_path: Path) -> None:
    """Meta's own params.json (Llama 2 style: vocab_size -1, multiple_of, no ffn_dim) over two files."""
    args = tiny_args(n_heads=4, n_kv_heads=2, ffn_dim=192, norm_eps=1e-6)
    hf_model = make_hf_model(args, tmp_path / "hf")
    params = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": -1, "multiple_of": 32,
              "norm_eps": 1e-6, "rope_theta": 10000.0, "max_seq_len": 128}  # fmt: skip
    write_meta_folder(hf_model, args, tmp_path / "meta", 2, 1, params)
    convert_to_dcp("meta", tmp_path / "meta", tmp_path / "dcp")
    ours, _ = load_model(tmp_path / "dcp")
    assert ours.args == args  # vocab from the embedding's shape, ffn_dim from Meta's rule
    assert max_diff(ours, hf_model, random_tokens()) <= ATOL


def test_export_reads_model_keys_only_and_pth_loads_strictly(tmp_path: Path, tiny_data, monkeypatch) -> None:
    """A training checkpoint (with optimizer state) → .pth + HF; DCP is only asked for model.* keys."""
    from torch.distributed.checkpoint import FileSystemReader

    from lmrepro.checkpoint import dcp as ckpt

    args = tiny_args(vocab_size=300, tie_embeddings=True)
    model = Transformer(args)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    optimizer.step()
    meta = {"step": 3, "tokens_seen": 12, "model_args": params_json(args)}
    ckpt.save(tmp_path / "ckpt", model, optimizer, {"step": 3}, meta)

    requested: list[str] = []
    original = FileSystemReader.read_data

    def spy(self, plan, planner):
        requested.extend(item.dest_index.fqn for item in plan.items)
        return original(self, plan, planner)

    monkeypatch.setattr(FileSystemReader, "read_data", spy)
    export_checkpoint(
        tmp_path / "ckpt", tmp_path / "out", tokenizer_dir=tiny_data["tokenizer"], dtype="bfloat16"
    )
    assert requested and all(fqn.startswith("model.") for fqn in requested)

    state = torch.load(tmp_path / "out" / "consolidated.pth", weights_only=True)
    assert state["output.weight"] is state["tok_embeddings.weight"]  # tied: stored once, both names
    fresh = Transformer(args)
    fresh.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value.bfloat16()), key
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "hf").eval()
    assert hf.dtype == torch.bfloat16


# ---------------------------------------------------------------------------------- step-0 from base


def base_args(**kw) -> ModelArgs:
    """The architecture write_train_toml's runs have (debug flavor + overrides), vocab 300."""
    run = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=512, vocab_size=300)
    return tiny_args(**{**run, **kw})


@pytest.fixture(scope="module")
def run_config(tmp_path_factory, tiny_data) -> Path:
    tmp = tmp_path_factory.mktemp("run")
    return write_train_toml(tmp / "train.toml", tmp, tiny_data["train_index"], training={"seed": 5})


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_model(checkpoint)[0].state_dict()


def test_run_from_converted_base_starts_with_the_base_weights(tmp_path: Path, run_config: Path) -> None:
    make_hf_model(base_args(), tmp_path / "src")
    convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    meta = init_checkpoint(load_job_config(run_config), tmp_path / "step-0", base=tmp_path / "dcp")
    assert is_complete(tmp_path / "step-0") and meta["init"]["base"] == str(tmp_path / "dcp")
    base, step0 = weights(tmp_path / "dcp"), weights(tmp_path / "step-0")
    assert base.keys() == step0.keys()
    assert all(torch.equal(step0[k], base[k]) for k in base)
    record = json.loads((tmp_path / "step-0" / INIT_RECORD).read_text())
    assert record["random_init"] == {} and record["reshaped"] == {}


def test_export_script_exports_a_converted_base(tmp_path: Path, tiny_data) -> None:
    """A converted base (no step, no tokens seen in its meta.json) exports like a run's checkpoint."""
    make_hf_model(base_args(), tmp_path / "src")
    convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    run = subprocess.run(
        [sys.executable, REPO / "workflow" / "scripts" / "export_checkpoint.py", "--checkpoint",
         tmp_path / "dcp", "--tokenizer", tiny_data["tokenizer"], "--out", tmp_path / "out"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = tmp_path / "out"
    assert (out / "consolidated.pth").is_file() and (out / "params.json").is_file()
    assert (out / "hf" / "config.json").is_file()
    info = json.loads((out / "export.json").read_text())
    assert info["step"] is None and info["tokens_seen"] is None and info["run"] is None
    hf = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    toks = torch.randint(0, 300, (1, 16))
    assert max_diff(load_model(tmp_path / "dcp")[0], hf, toks) < 1e-4


@pytest.mark.parametrize("vocab", ["drop", "resize"])
def test_vocab_drop_and_resize(vocab: str, tmp_path: Path, run_config: Path) -> None:
    make_hf_model(base_args(vocab_size=280), tmp_path / "src")
    record = convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp", vocab=vocab)
    init_checkpoint(load_job_config(run_config), tmp_path / "step-0", base=tmp_path / "dcp")
    init_checkpoint(load_job_config(run_config), tmp_path / "seed")  # the same run without a base
    step0, seed = weights(tmp_path / "step-0"), weights(tmp_path / "seed")
    src = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "src").state_dict()
    emb, out = src["model.embed_tokens.weight"], src["lm_head.weight"]
    assert torch.equal(step0["norm.weight"], src["model.norm.weight"])
    if vocab == "drop":
        assert set(record["missing"]) == {"tok_embeddings.weight", "output.weight"}
        assert torch.equal(step0["tok_embeddings.weight"], seed["tok_embeddings.weight"])  # seeded init
        assert torch.equal(step0["output.weight"], seed["output.weight"])
    else:
        assert torch.equal(step0["tok_embeddings.weight"][:280], emb)
        assert torch.allclose(step0["tok_embeddings.weight"][280:], emb.mean(0).expand(20, -1))
        assert torch.allclose(step0["output.weight"][280:], out.mean(0).expand(20, -1))
        init = json.loads((tmp_path / "step-0" / INIT_RECORD).read_text())
        assert init["reshaped"]["tok_embeddings.weight"]["from"] == [280, 64]


def test_vocab_mismatch_without_option_and_shape_mismatch(tmp_path: Path, run_config: Path) -> None:
    make_hf_model(base_args(vocab_size=280), tmp_path / "src")
    convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")  # vocab: keep
    with pytest.raises(ValueError, match=r"vocabulary mismatch: tok_embeddings.weight .* 280 rows .* 300"):
        init_checkpoint(load_job_config(run_config), tmp_path / "step-0", base=tmp_path / "dcp")
    make_hf_model(base_args(n_layers=3), tmp_path / "deep")
    convert_to_dcp("hf", tmp_path / "deep", tmp_path / "deep-dcp")
    with pytest.raises(ValueError, match=r"model.n_layers = 2 but base .* has n_layers = 3"):
        init_checkpoint(load_job_config(run_config), tmp_path / "step-0", base=tmp_path / "deep-dcp")
    assert not (tmp_path / "step-0").exists()


# --------------------------------------------------------------------------------------- bad input


def test_bad_hf_inputs_name_the_key_or_file(tmp_path: Path) -> None:
    make_hf_model(tiny_args(), tmp_path / "src")
    cfg_path = tmp_path / "src" / "config.json"
    cfg = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**cfg, "intermediate_size": 128}))
    with pytest.raises(
        ValueError,
        match=r"gate_proj.weight \(model-\d+-of-\d+.safetensors\) has shape \[96, 64\], "
        r"but the config says \[128, 64\]",
    ):
        convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")

    cfg_path.write_text(json.dumps({**cfg, "model_type": "mistral"}))
    with pytest.raises(ValueError, match=r"config.json: .*model_type='mistral'"):
        convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")

    cfg_path.write_text(json.dumps(cfg))
    index = json.loads((tmp_path / "src" / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (tmp_path / "src" / victim).rename(tmp_path / victim)
    with pytest.raises(FileNotFoundError, match=victim):
        convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    assert not (tmp_path / "dcp").exists() and not (tmp_path / ".dcp.partial").exists()


def test_unknown_tensor_is_an_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    args = tiny_args()
    make_hf_model(args, tmp_path / "src", max_shard_size="10MB")
    (tmp_path / "src" / "model.safetensors.index.json").unlink(missing_ok=True)
    path = tmp_path / "src" / "model.safetensors"
    sd = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "src").state_dict()
    save_file({**sd, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, path)
    with pytest.raises(
        ValueError, match=r"model.safetensors: unexpected key 'model.layers.0.self_attn.q_norm"
    ):
        convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")


def test_bad_meta_inputs(tmp_path: Path) -> None:
    args = tiny_args()
    hf_model = make_hf_model(args, tmp_path / "hf")
    write_meta_folder(hf_model, args, tmp_path / "meta", 2, 0, params_json(args))
    other = torch.load(tmp_path / "meta" / "consolidated.01.pth", weights_only=True)
    del other["norm.weight"]
    torch.save(other, tmp_path / "meta" / "consolidated.01.pth")
    with pytest.raises(
        ValueError, match=r"consolidated.01.pth and .*consolidated.00.pth hold different keys"
    ):
        convert_to_dcp("meta", tmp_path / "meta", tmp_path / "dcp")
    (tmp_path / "meta" / "consolidated.01.pth").write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"consolidated.01.pth is not a readable torch.save file"):
        convert_to_dcp("meta", tmp_path / "meta", tmp_path / "dcp")
    (tmp_path / "meta" / "params.json").unlink()
    with pytest.raises(FileNotFoundError, match="no params.json"):
        convert_to_dcp("meta", tmp_path / "meta", tmp_path / "dcp")


def test_interrupted_conversion_leaves_nothing_complete(tmp_path: Path, monkeypatch) -> None:
    make_hf_model(tiny_args(), tmp_path / "src")
    calls = {"n": 0}
    original = convert.SafetensorsReader.read

    def flaky(self, key):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("killed")  # a job dying half-way (DCP re-raises it wrapped)
        return original(self, key)

    monkeypatch.setattr(convert.SafetensorsReader, "read", flaky)
    with pytest.raises(Exception, match="killed"):
        convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# ---------------------------------------------------------------------------------- upload, scripts


def test_upload_dry_run_and_token_handling(tmp_path: Path, monkeypatch, caplog, capsys) -> None:
    args = tiny_args()
    make_hf_model(args, tmp_path / "src", max_shard_size="10MB")
    convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    dcp_to_hf(tmp_path / "dcp", tmp_path / "hf")

    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, *a, **kw):
            calls.append(("init", kw))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    plan = upload_hf_folder(tmp_path / "hf", "me/tiny", dry_run=True)
    assert calls == []  # a dry run touches no network
    assert dict(plan)["model.safetensors"] == (tmp_path / "hf" / "model.safetensors").stat().st_size
    assert {"config.json", "generation_config.json"} <= dict(plan).keys()

    upload_hf_folder(tmp_path / "hf", "me/tiny")
    assert [c[0] for c in calls] == ["init", "create_repo", "upload_folder"]
    assert calls[1][2]["token"] == "hf_secret_value" and calls[1][2]["private"] is True
    assert calls[2][1]["folder_path"] == str(tmp_path / "hf")
    assert "hf_secret_value" not in caplog.text + "".join(capsys.readouterr())
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ValueError, match="HF_TOKEN is not set"):
        upload_hf_folder(tmp_path / "hf", "me/tiny")


def test_scripts_convert_and_dry_run_upload(tmp_path: Path) -> None:
    make_hf_model(tiny_args(tie_embeddings=True), tmp_path / "src")
    env = {**os.environ, "HF_TOKEN": "hf_never_printed"}
    script = REPO / "workflow" / "scripts"
    run = subprocess.run(
        [sys.executable, script / "convert_to_dcp.py", "--format", "hf", "--source", tmp_path / "src",
         "--vocab", "drop", "--out", tmp_path / "dcp"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert read_checkpoint_info(tmp_path / "dcp")["vocab"] == "drop"
    bad = subprocess.run(
        [sys.executable, script / "upload_hf.py", tmp_path / "dcp", "me/x", "--dry-run"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "no config.json" in bad.stderr
    make_hf_model(tiny_args(), tmp_path / "hf", max_shard_size="10MB")
    ok = subprocess.run(
        [sys.executable, script / "upload_hf.py", tmp_path / "hf", "me/x", "--dry-run"],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert "would upload" in ok.stdout and "model.safetensors" in ok.stdout
    assert "hf_never_printed" not in ok.stdout + ok.stderr


# ------------------------------------------------------------------------------- parse-time checks


@pytest.fixture
def config_root(tmp_path: Path) -> tuple[dict, Path]:
    import shutil

    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    args = base_args(vocab_size=512, max_seq_len=512)
    make_hf_model(args, tmp_path / "bases" / "tinyllama", max_shard_size="10MB")
    cfg["bases"] = {"tinyllama": {"format": "hf", "path": "bases/tinyllama", "vocab": "keep"}}
    run = cfg["runs"]["tiny"]
    run["init"] = "tinyllama"
    run["overrides"]["model"] = {
        "overrides": {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_dim": 128}
    }
    return cfg, tmp_path


def test_check_config_accepts_a_matching_base(config_root) -> None:
    cfg, root = config_root
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    jsonschema.validate(cfg, schema)
    check_config(cfg, root=root)


def _unknown_base(c: dict) -> None:
    c["runs"]["tiny"]["init"] = "nope"


def _missing_path(c: dict) -> None:
    c["bases"]["tinyllama"]["path"] = "bases/gone"


def _deeper_run(c: dict) -> None:
    c["runs"]["tiny"]["overrides"]["model"]["overrides"]["n_layers"] = 4


def _other_vocab(c: dict) -> None:
    c["tokenizers"]["synthetic-bpe"]["vocab_size"] = 600


def _wrong_format(c: dict) -> None:
    c["bases"]["tinyllama"]["format"] = "meta"


BAD_BASES = {
    "unknown-base": (_unknown_base, ValueError, r"runs\.tiny\.init = 'nope' is not a configured base"),
    "missing-path": (_missing_path, FileNotFoundError, r"bases\.tinyllama\.path: bases/gone"),
    "shape": (
        _deeper_run,
        ValueError,
        r"runs\.tiny: model\.n_layers = 4 but base tinyllama has n_layers = 2",
    ),
    "vocab": (
        _other_vocab,
        ValueError,
        r"runs\.tiny\.init: base tinyllama has 512 tokens but tokenizer synthetic-bpe has 600; "
        r"set bases\.tinyllama\.vocab to drop or resize",
    ),
    "format": (_wrong_format, FileNotFoundError, r"bases\.tinyllama: no params\.json"),
}


@pytest.mark.parametrize("case", list(BAD_BASES))
def test_check_config_rejects_bad_bases(config_root, case: str) -> None:
    edit, error, message = BAD_BASES[case]
    cfg, root = config_root
    cfg = copy.deepcopy(cfg)
    edit(cfg)
    with pytest.raises(error, match=message):
        check_config(cfg, root=root)
