"""Tokenizer kinds behind one interface: hf folders, Llama-3 tiktoken and SentencePiece tokenizer.model files.

The model files are built here: a tiktoken ranks file from a BPE trained on a toy corpus, and a SentencePiece
model trained with Llama-2's settings. Both are imported like the real Llama-3 / Code Llama files.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from helpers import REPO
from test_tokenize import expected_stream, sample_docs, sentences, split_documents, write_jsonl

from lmrepro.data.encode import tokenize_to_shards
from lmrepro.data.shards import INDEX_FILE, TokenStream, read_index
from lmrepro.data.tokenizer import (
    BOS_TOKEN,
    EOS_TOKEN,
    LLAMA3_SPECIAL_TOKENS,
    META_FILE,
    HFTokenizer,
    SentencePieceTokenizer,
    TiktokenTokenizer,
    load_tokenizer,
    train_bpe,
)
from lmrepro.data.tokenizer_import import PROBE_TEXTS, check_hf_conversion, import_tokenizer
from lmrepro.workflow import check_config

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

TRICKY = [
    " leading space",
    "two  spaces\n\nand a paragraph",
    "naïve café – ünïcode €, emoji 🙂 and 中文",
    "digits 1234567 and 3.14",
    "<|end_of_text|> and <s> written in a document",
]


def write_tiktoken_ranks(texts: list[str], path: Path, vocab_size: int = 1000) -> Path:
    """A Llama-3 format ranks file (`base64(token) rank` per line) from a byte-level BPE trained on texts."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet))
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in tok.get_vocab().items()}
    lines = [f"{base64.b64encode(token).decode()} {rank}" for token, rank in sorted(ranks.items(), key=_rank)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _rank(item: tuple[bytes, int]) -> int:
    return item[1]


def write_sentencepiece_model(texts: list[str], path: Path, vocab_size: int = 400) -> Path:
    """SentencePiece BPE with Llama-2's settings (byte fallback, dummy prefix; unk 0, bos 1, eos 2)."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return sentences(600, seed=3) + TRICKY


@pytest.fixture(scope="module")
def ranks_file(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    return write_tiktoken_ranks(corpus, tmp_path_factory.mktemp("llama3") / "tokenizer.model")


@pytest.fixture(scope="module")
def sp_file(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    return write_sentencepiece_model(corpus, tmp_path_factory.mktemp("codellama") / "tokenizer.model")


@pytest.fixture(scope="module")
def tiktoken_dir(tmp_path_factory: pytest.TempPathFactory, ranks_file: Path) -> Path:
    out = tmp_path_factory.mktemp("tokenizers") / "llama3"
    import_tokenizer({"kind": "tiktoken", "path": str(ranks_file)}, out, name="llama3")
    return out


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory: pytest.TempPathFactory, sp_file: Path) -> Path:
    out = tmp_path_factory.mktemp("tokenizers") / "codellama"
    import_tokenizer({"kind": "sentencepiece", "path": str(sp_file.parent)}, out, name="codellama")
    return out


def assert_autotokenizer_agrees(folder: Path, texts: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """What the HF export ships (every file of the folder) loads with AutoTokenizer and tokenizes alike."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = load_tokenizer(folder)
    hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert len(hf) == tok.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)
    for text in texts:
        if "<|" in text or "<s>" in text:
            continue  # AutoTokenizer parses special-token text; our tokenize step does not
        ids = tok.encode_batch([text])[0]
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert hf(text).input_ids == [tok.bos_id, *ids], text  # BOS prepended, as lm-eval expects
        assert hf.decode(ids) == tok.decode(ids)


# ------------------------------------------------------------------------------------------- tiktoken


def test_tiktoken_llama3_layout(tiktoken_dir: Path, ranks_file: Path) -> None:
    assert sorted(p.name for p in tiktoken_dir.iterdir()) == sorted(
        ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", META_FILE]
    )
    tok = load_tokenizer(tiktoken_dir)
    assert isinstance(tok, TiktokenTokenizer) and tok.kind == "tiktoken"
    num_ranks = len(ranks_file.read_text().splitlines())
    assert tok.vocab_size == num_ranks + 256
    # Llama-3's ids: <|begin_of_text|> = first id after the ranks (128000 in the real file), then EOS.
    assert (tok.bos_id, tok.eos_id) == (num_ranks, num_ranks + 1)
    assert tok._enc.encode_single_token("<|eot_id|>") == num_ranks + 9
    assert tok._enc.encode_single_token("<|reserved_special_token_250|>") == num_ranks + 255
    assert len(LLAMA3_SPECIAL_TOKENS) == 256
    assert tok.sha256 == hashlib.sha256(ranks_file.read_bytes()).hexdigest()
    # Loading through the folder's tokenizer.json path (what the rules pass) still uses tiktoken.
    assert isinstance(load_tokenizer(tiktoken_dir / "tokenizer.json"), TiktokenTokenizer)


def test_tiktoken_encodes_without_specials_and_round_trips(tiktoken_dir: Path, corpus: list[str]) -> None:
    tok = load_tokenizer(tiktoken_dir)
    for text, ids in zip(corpus, tok.encode_batch(corpus), strict=True):
        assert tok.bos_id not in ids and tok.eos_id not in ids
        assert all(0 <= i < tok.bos_id for i in ids)  # special-token text is plain text
        assert tok.decode(ids) == text
    assert len(tok.encode_batch([corpus[0]])[0]) < len(corpus[0].encode())  # merges are used


def test_tiktoken_export_folder_loads_with_autotokenizer(
    tiktoken_dir: Path, corpus: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_autotokenizer_agrees(tiktoken_dir, corpus[:200] + TRICKY + PROBE_TEXTS, monkeypatch)


def test_tiktoken_kind_refuses_a_sentencepiece_file(sp_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as e:
        import_tokenizer({"kind": "tiktoken", "path": str(sp_file)}, tmp_path / "tok", name="l3")
    assert "tokenizers.l3.path" in str(e.value) and str(sp_file) in str(e.value)
    assert "not a tiktoken BPE ranks file" in str(e.value)
    assert not (tmp_path / "tok").exists() and not list(tmp_path.glob(".tok*"))


# -------------------------------------------------------------------------------------- sentencepiece


def test_sentencepiece_llama_ids_and_round_trip(sp_dir: Path, sp_file: Path, corpus: list[str]) -> None:
    tok = load_tokenizer(sp_dir)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (400, 1, 2)
    assert tok.sha256 == hashlib.sha256(sp_file.read_bytes()).hexdigest()
    for text, ids in zip(corpus, tok.encode_batch(corpus), strict=True):
        assert 1 not in ids and 2 not in ids
        assert tok.decode(ids) == text


def test_sentencepiece_export_folder_loads_with_autotokenizer(
    sp_dir: Path, corpus: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_autotokenizer_agrees(sp_dir, corpus[:200] + TRICKY + PROBE_TEXTS, monkeypatch)


def test_sentencepiece_kind_refuses_a_tiktoken_file(ranks_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as e:
        import_tokenizer({"kind": "sentencepiece", "path": str(ranks_file)}, tmp_path / "tok", name="cl")
    assert "tokenizers.cl.path" in str(e.value) and "not a SentencePiece model" in str(e.value)


def test_conversion_disagreement_stops_the_import(sp_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(sp_dir, tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    config["normalizer"] = None  # drops sentencepiece's dummy prefix: most texts now tokenize differently
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the converted tokenizer.json disagrees with sentencepiece"):
        check_hf_conversion(load_tokenizer(tmp_path / "tok"), tmp_path / "tok" / "tokenizer.json", sp_dir)


# ------------------------------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    root = tmp_path_factory.mktemp("bpe")
    return train_bpe([write_jsonl(root / "train.jsonl", corpus)], 400, root / "tokenizer")


def test_hf_folder_import_is_a_copy(bpe_dir: Path, tmp_path: Path, corpus: list[str]) -> None:
    tok = import_tokenizer({"kind": "hf", "path": str(bpe_dir)}, tmp_path / "hf", name="mine")
    original = load_tokenizer(bpe_dir)
    assert isinstance(tok, HFTokenizer)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.sha256) == (
        original.vocab_size,
        original.bos_id,
        original.eos_id,
        original.sha256,
    )
    assert tok.encode_batch(corpus) == original.encode_batch(corpus)


def test_hf_special_token_text_is_plain_text(bpe_dir: Path) -> None:
    tok = load_tokenizer(bpe_dir)
    ids = tok.encode_batch([f"before {EOS_TOKEN} after {BOS_TOKEN}"])[0]
    assert tok.eos_id not in ids and tok.bos_id not in ids
    assert tok.decode(ids) == f"before {EOS_TOKEN} after {BOS_TOKEN}"


def test_hf_bos_eos_from_config_and_gpt2_style(bpe_dir: Path, tmp_path: Path, corpus: list[str]) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(bpe_dir / "tokenizer.json", bare)  # no tokenizer_config.json
    spec = {
        "kind": "hf",
        "path": str(bare / "tokenizer.json"),
        "bos_token": "<|pad|>",
        "eos_token": "<|pad|>",
    }
    tok = import_tokenizer(spec, tmp_path / "gpt2", name="gpt2")
    pad = load_tokenizer(bpe_dir)._tok.token_to_id("<|pad|>")
    assert (tok.bos_id, tok.eos_id) == (None, pad)  # BOS == EOS: one separator between documents
    config = json.loads((tmp_path / "gpt2" / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"]) == ("<|pad|>", "<|pad|>")
    src = write_jsonl(tmp_path / "d.jsonl", corpus[:20])
    tokenize_to_shards([src], tmp_path / "gpt2", tmp_path / "shards")
    stream = TokenStream(tmp_path / "shards")
    tokens = stream.window(0, len(stream)).tolist()
    assert tokens.count(pad) == 20 and tokens[-1] == pad
    assert read_index(tmp_path / "shards" / INDEX_FILE)["bos_id"] is None


def test_hf_errors_name_the_key(bpe_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizers\.x\.path: .* has no tokenizer.json"):
        import_tokenizer({"kind": "hf", "path": str(tmp_path)}, tmp_path / "out", name="x")
    with pytest.raises(ValueError, match=r"tokenizers\.x\.eos_token = '<\|eot\|>' is not in the vocabulary"):
        import_tokenizer(
            {"kind": "hf", "path": str(bpe_dir), "eos_token": "<|eot|>"}, tmp_path / "out", name="x"
        )
    with pytest.raises(ValueError, match=r"tokenizers\.x\.vocab_size = 1000, but .* has 400 tokens"):
        import_tokenizer({"kind": "hf", "path": str(bpe_dir), "vocab_size": 1000}, tmp_path / "out", name="x")
    with pytest.raises(FileNotFoundError, match=r"tokenizers\.x\.path: .*nowhere does not exist"):
        import_tokenizer({"kind": "tiktoken", "path": str(tmp_path / "nowhere")}, tmp_path / "out", name="x")
    assert not (tmp_path / "out").exists()


def test_reimport_of_another_kind_leaves_no_stale_file(
    bpe_dir: Path, ranks_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tok"
    import_tokenizer({"kind": "tiktoken", "path": str(ranks_file)}, out, name="t")
    assert isinstance(load_tokenizer(out), TiktokenTokenizer)
    import_tokenizer({"kind": "hf", "path": str(bpe_dir)}, out, name="t")
    assert isinstance(load_tokenizer(out), HFTokenizer) and not (out / META_FILE).exists()
    train_bpe([write_jsonl(tmp_path / "t.jsonl", ["a b c"] * 10)], 300, out)  # and back to a BPE
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


# -------------------------------------------------------------------------------------- shards per kind


@pytest.mark.parametrize("kind", ["tiktoken", "sentencepiece"])
def test_tokenize_with_pretrained_kinds(
    kind: str, tiktoken_dir: Path, sp_dir: Path, tmp_path: Path, corpus: list[str]
) -> None:
    folder = tiktoken_dir if kind == "tiktoken" else sp_dir
    texts = sample_docs() + TRICKY
    src = write_jsonl(tmp_path / "d.jsonl", texts * 3)
    out = tmp_path / "shards"
    tokenize_to_shards([src], folder, out, piece_bytes=1500, num_proc=2)
    tok = load_tokenizer(folder)
    index = read_index(out / INDEX_FILE)
    assert (index["vocab_size"], index["bos_id"], index["eos_id"]) == (tok.vocab_size, tok.bos_id, tok.eos_id)
    assert index["tokenizer_sha256"] == tok.sha256 and len(index["shards"]) > 1
    stream = TokenStream(out, verify_checksums=True)
    tokens = stream.window(0, len(stream)).tolist()
    assert tokens == expected_stream(folder, texts * 3)
    assert [tok.decode(d) for d in split_documents(tokens, tok.bos_id, tok.eos_id)] == texts * 3


# ------------------------------------------------------------------------------ config schema and checks


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def schema_errors(cfg: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cfg))


def test_schema_accepts_every_kind(config: dict) -> None:
    config["tokenizers"].update(
        {
            "llama3": {"kind": "tiktoken", "path": "tok/llama3/tokenizer.model", "vocab_size": 128256},
            "codellama": {"kind": "sentencepiece", "path": "tok/codellama"},
            "neox": {
                "kind": "hf",
                "path": "tok/neox",
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
            },
        }
    )
    assert schema_errors(config) == []


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"kind": "tiktoken"}, "tokenizers.t: 'path' is a required property"),
        ({"kind": "tiktoken", "path": "x", "dataset": "synthetic"}, "tokenizers.t.dataset:"),
        ({"kind": "sentencepiece", "path": "x", "eos_token": "</s>"}, "tokenizers.t.eos_token:"),
        ({"kind": "bpe", "dataset": "synthetic"}, "tokenizers.t: 'vocab_size' is a required property"),
        ({"kind": "bpe", "dataset": "synthetic", "vocab_size": 300, "path": "x"}, "tokenizers.t.path:"),
        ({"kind": "wordpiece", "path": "x"}, "tokenizers.t.kind: 'wordpiece' is not one of"),
        ({"kind": "hf", "path": "x", "bos": "<s>"}, "'bos' was unexpected"),
    ],
)
def test_schema_names_the_offending_key(config: dict, entry: dict, expected: str) -> None:
    config["tokenizers"]["t"] = entry
    errors = schema_errors(config)
    assert any(expected in e for e in errors), errors


def test_check_config_tokenizer_path(config: dict, tmp_path: Path) -> None:
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = copy.deepcopy(config)
    cfg["tokenizers"]["llama3"] = {"kind": "tiktoken", "path": "tok/tokenizer.model"}
    with pytest.raises(
        FileNotFoundError, match=r"tokenizers\.llama3\.path: tok/tokenizer\.model does not exist"
    ):
        check_config(cfg, root=tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_text("IQ== 0\n")  # a tiktoken ranks line
    cfg["runs"]["tiny"]["tokenizer"] = "llama3"
    check_config(cfg, root=tmp_path)  # no dataset needed for a pretrained tokenizer


def test_a_changed_ranks_file_is_read_again(ranks_file: Path, tmp_path: Path) -> None:
    """tiktoken's own loader caches files by path (in a temp folder); ours reads the file as it is now."""
    from lmrepro.data.tokenizer import load_llama3_tiktoken

    path = tmp_path / "tokenizer.model"
    shutil.copy(ranks_file, path)
    before = load_llama3_tiktoken(path).n_vocab
    path.write_text("\n".join(ranks_file.read_text().splitlines()[:300]) + "\n")
    assert load_llama3_tiktoken(path).n_vocab == 300 + 256 != before


def test_token_to_id_and_pad_of_every_engine(tiktoken_dir: Path, sp_dir: Path, bpe_dir: Path) -> None:
    """The lookups the MLM settings resolve through (training.mlm.mask_token, never_mask_tokens)."""
    from lmrepro.data.tokenizer import BPE_SPECIAL_TOKENS
    from lmrepro.workflow import tokenizer_mlm_ids

    tok = load_tokenizer(tiktoken_dir)
    n = tok.vocab_size - 256  # the ranks; Llama-3's reserved_special_token_100 is special 105 after them
    assert tok.token_to_id("<|reserved_special_token_100|>") == n + 105  # 128105 in the real file
    assert tok.token_to_id("<|mask|>") is None and tok.pad_id is None
    sp = load_tokenizer(sp_dir)
    assert (sp.token_to_id("</s>"), sp.token_to_id("<nope>"), sp.pad_id) == (2, None, None)
    bpe = load_tokenizer(bpe_dir)
    # the parse-time check assumes the trainer gives the special tokens the first ids, in this order
    assert [bpe.token_to_id(t) for t in BPE_SPECIAL_TOKENS] == [0, 1, 2]
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id) == (0, 1, 2)

    class Mlm:
        mask_token, never_mask_tokens = "<|pad|>", ["bos", "eos", "pad", 7]

    assert tokenizer_mlm_ids(Mlm, bpe) == {"mask_token_id": 2, "never_mask_ids": [0, 1, 2, 7]}
    Mlm.mask_token = "<|reserved_special_token_100|>"
    assert tokenizer_mlm_ids(Mlm, tok) == {"mask_token_id": n + 105, "never_mask_ids": [7, n, n + 1]}
