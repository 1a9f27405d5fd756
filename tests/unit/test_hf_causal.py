"""The transformers backend (model/hf_causal.py): configs written by transformers itself, the loss equal to
transformers' own, meta-device build + seeded init, the decoder blocks, and the refusals."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_HF_CONFIGS, write_tiny_hf_config

from lmrepro.config import HFModelConfig, JobConfig, ModelConfig, validate
from lmrepro.model.build import args_from_info, build_model, model_info, output_layer_name
from lmrepro.model.hf_causal import HFCausalLM, hf_causal_args

transformers = pytest.importorskip("transformers")

VOCAB = 97
TINY = TINY_HF_CONFIGS
BLOCKS = {"gpt_neo": "GPTNeoBlock", "gpt_neox": "GPTNeoXLayer", "llama": "LlamaDecoderLayer"}
# transformers 5 names (4.x called GPT-NeoX's embed_out)
OUTPUT = {"gpt_neo": "lm_head", "gpt_neox": "lm_head", "llama": "lm_head"}


def write_tiny_config(folder, model_type: str):
    return write_tiny_hf_config(folder, model_type, vocab_size=50)


def seeded_model(args, seed=0) -> HFCausalLM:
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = build_model(args)
    model.to_empty(device="cpu")
    model.init_weights()
    return model


@pytest.mark.parametrize("model_type", sorted(TINY))
def test_config_folder_builds_and_loss_equals_transformers_loss(tmp_path, model_type):
    folder = write_tiny_config(tmp_path / model_type, model_type)
    args = hf_causal_args(str(folder), "", {}, VOCAB)
    assert args.model_type == model_type and args.vocab_size == VOCAB  # the run's tokenizer wins
    model = seeded_model(args)
    assert [type(b).__name__ for b in model.layers.children()] == [BLOCKS[model_type]] * 2
    assert output_layer_name(model) == OUTPUT[model_type]
    # keys are transformers' own: the plain transformers model loads our state dict strictly
    plain = transformers.AutoModelForCausalLM.from_config(args.transformers_config())
    plain.load_state_dict(model.state_dict(), strict=True)
    window = torch.randint(0, VOCAB, (3, 17), generator=torch.Generator().manual_seed(1))
    ours = model(window[:, :-1], window[:, 1:])
    theirs = plain(input_ids=window, labels=window).loss  # transformers shifts the labels itself
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-6), (ours, theirs)
    assert model(window[:, :-1]).shape == (3, 16, VOCAB)


def test_seeded_init_is_deterministic_and_recomputes_buffers(tmp_path):
    args = hf_causal_args(str(write_tiny_config(tmp_path / "neo", "gpt_neo")), "", {}, VOCAB)
    a, b = seeded_model(args, seed=3), seeded_model(args, seed=3)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(seeded_model(args, seed=4).lm_head.weight, a.lm_head.weight)
    assert a.lm_head.weight is a.transformer.wte.weight  # re-tied after to_empty
    # the non-persistent causal/local masks are transformers' own, not to_empty's garbage
    reference = transformers.AutoModelForCausalLM.from_config(args.transformers_config())
    for (name, buf), (_, ref) in zip(a.hf.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(buf, ref), name
    std = a.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std - args.config["initializer_range"]) < 0.005


def test_model_type_with_values_and_meta_json_round_trip():
    args = hf_causal_args("", "gpt_neo", TINY["gpt_neo"], VOCAB)
    assert args.config["hidden_size"] == 32 and args.max_seq_len == 64
    again = args_from_info(model_info(args))
    assert again == args
    assert seeded_model(again).num_params() == seeded_model(args).num_params()


@pytest.mark.parametrize(
    "config, model_type, values, error, message",
    [
        ("missing-folder", "", {}, FileNotFoundError, r"model.hf.config = missing-folder: no config.json"),
        ("", "gpt-neo", {}, ValueError, r"model.hf.model_type = 'gpt-neo' is not a transformers model type"),
        ("", "t5", {}, ValueError, r"model type 't5' has no causal LM"),
        ("", "gpt_neo", {"hiden_size": 3}, ValueError, r"config_values.hiden_size: GPTNeoConfig has no"),
    ],
)
def test_bad_hf_models_are_refused_naming_the_key(tmp_path, config, model_type, values, error, message):
    with pytest.raises(error, match=message):
        hf_causal_args(config, model_type, values, VOCAB, root=tmp_path)


def test_a_config_folder_that_is_not_causal_is_refused(tmp_path):
    transformers.AutoConfig.for_model("t5").save_pretrained(tmp_path / "t5")
    with pytest.raises(ValueError, match=r"model.hf.config: model type 't5' has no causal LM"):
        hf_causal_args(str(tmp_path / "t5"), "", {}, VOCAB)


@pytest.mark.parametrize(
    "hf, sections, message",
    [
        (HFModelConfig(config="a", model_type="gpt_neo"), {}, "set one of config"),
        (HFModelConfig(config_values={"a": 1}), {}, "config_values needs"),
        (HFModelConfig(model_type="gpt_neo"), {"overrides": {"dim": 8}}, "with model.hf use"),
    ],
)
def test_config_validation(hf, sections, message):
    job = JobConfig(model=ModelConfig(hf=hf, **sections))
    with pytest.raises(ValueError, match=message):
        validate(job)


def test_tensor_parallel_is_refused_for_hf_models():
    job = JobConfig(model=ModelConfig(hf=HFModelConfig(model_type="gpt_neo")))
    job.parallel.tp_degree = 2
    with pytest.raises(ValueError, match="tensor parallel is only for the Llama model"):
        validate(job)


def test_export_is_save_pretrained_and_reloads_with_equal_logits(tmp_path, tiny_data):
    from helpers import write_train_toml

    from lmrepro.checkpoint.dcp import load_model
    from lmrepro.checkpoint.export import export_checkpoint
    from lmrepro.config import load_job_config
    from lmrepro.data.tokenizer import load_tokenizer
    from lmrepro.train.trainer import init_checkpoint

    folder = write_tiny_config(tmp_path / "neo", "gpt_neo")
    hf = {"overrides": {}, "hf": {"config": str(folder)}}
    config = write_train_toml(tmp_path / "train.toml", tmp_path, tiny_data["train_index"], model=hf)
    init_checkpoint(load_job_config(config), tmp_path / "step-0")
    record = export_checkpoint(tmp_path / "step-0", tmp_path / "export", tokenizer_dir=tiny_data["tokenizer"])
    assert record["step"] == 0
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert files == ["export.json", "hf"]  # no Meta consolidated.pth / params.json for a transformers model
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "hf")
    tok = load_tokenizer(tiny_data["tokenizer"])
    assert (reloaded.config.bos_token_id, reloaded.config.eos_token_id) == (tok.bos_id, tok.eos_id)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "export" / "hf").vocab_size == tok.vocab_size
    ours, _ = load_model(tmp_path / "step-0")
    tokens = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=tokens).logits, ours(tokens))


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_wraps_the_blocks_and_keeps_the_gradients(tmp_path, mode):
    from lmrepro.train.parallel import apply_ac

    args = hf_causal_args(str(write_tiny_config(tmp_path / "neo", "gpt_neo")), "", {}, VOCAB)
    plain, checkpointed = seeded_model(args), seeded_model(args)
    apply_ac(checkpointed, mode)
    assert all(type(b).__name__ == "CheckpointWrapper" for b in checkpointed.layers.children())
    assert all(type(b).__name__ == "CheckpointWrapper" for b in checkpointed.transformer.h)  # the model's own
    window = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(2))
    for model in (plain, checkpointed):
        model(window[:, :-1], window[:, 1:]).backward()
    grads = {n: p.grad for n, p in plain.named_parameters()}
    for name, p in checkpointed.named_parameters():
        assert torch.equal(p.grad, grads[name.replace("._checkpoint_wrapped_module", "")]), name


def test_init_from_a_transformers_folder_and_its_parse_time_checks(tmp_path, tiny_data):
    from helpers import write_train_toml

    from lmrepro.checkpoint.dcp import load_model
    from lmrepro.config import load_job_config
    from lmrepro.train.trainer import init_checkpoint
    from lmrepro.workflow import _check_base, _check_run_transformers_base

    # a "released" model: a trained-elsewhere transformers folder with the run's 300-token vocabulary
    config = transformers.AutoConfig.for_model("gpt_neo", vocab_size=300, **TINY["gpt_neo"])
    torch.manual_seed(5)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    released = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    hf = {"overrides": {}, "hf": {"config": str(tmp_path / "base")}}
    train = write_train_toml(tmp_path / "train.toml", tmp_path, tiny_data["train_index"], model=hf)
    init_checkpoint(load_job_config(train), tmp_path / "step-0", base=tmp_path / "base")
    model, info = load_model(tmp_path / "step-0")
    assert info["init"]["base"] == str(tmp_path / "base")
    theirs = released.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())

    spec = {"format": "transformers", "path": "base"}
    assert _check_base("neo", spec, tmp_path).vocab_size == 300
    with pytest.raises(ValueError, match="a transformers base keeps its vocabulary"):
        _check_base("neo", {**spec, "vocab": "resize"}, tmp_path)
    settings = {"bases": {"neo": spec}, "tokenizers": {"t": {"kind": "bpe", "vocab_size": 300}}}
    run = {"init": "neo", "tokenizer": "t"}
    _check_run_transformers_base("r", run, load_job_config(train), settings, tmp_path)  # the same folder: ok
    other = write_train_toml(
        tmp_path / "other.toml",
        tmp_path,
        tiny_data["train_index"],
        model={"overrides": {}, "hf": {"model_type": "gpt_neo"}},
    )
    with pytest.raises(ValueError, match=r"runs.r.init: a run started from transformers base neo sets"):
        _check_run_transformers_base("r", run, load_job_config(other), settings, tmp_path)
    settings["tokenizers"]["t"]["vocab_size"] = 512
    with pytest.raises(ValueError, match="base neo has 300 tokens but tokenizer t has 512"):
        _check_run_transformers_base("r", run, load_job_config(train), settings, tmp_path)
