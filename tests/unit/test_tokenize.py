"""Unit tests for lmrepro.data.tokenizer (BPE training, loading) and lmrepro.data.tokenize (shards)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from lmrepro.data.shards import TokenStream, read_header, read_index
from lmrepro.data.tokenize import tokenize_to_shards
from lmrepro.data.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, load_tokenizer, train_bpe

VOCAB = 300
SUBJECTS = ["the cat", "a dog", "my neighbour", "the old sailor", "every child", "the blue whale"]
VERBS = ["sees", "likes", "follows", "paints", "remembers", "avoids"]
OBJECTS = ["the moon", "a red apple", "seven stones", "the quiet harbour", "its own shadow", "the map"]
ENDINGS = [".", "!", " today.", " at night.", " again?"]


def sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        text = " ".join(words) + rng.choice(ENDINGS)
        if rng.random() < 0.3:
            text += f" It was {rng.randint(0, 999)} steps away."
        out.append(text[0].upper() + text[1:])
    return out


def write_jsonl(path: Path, texts: list[str], key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for text in texts:
            f.write(json.dumps({key: text, "id": len(text)}) + "\n")
    return path


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bpe")
    train = write_jsonl(root / "train.jsonl", sentences(400, seed=0))
    out = train_bpe([train], VOCAB, root / "tokenizer")
    assert out == root / "tokenizer"
    return out


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return sentences(60, seed=1) + ["naïve café – ünïcode €", "  leading and trailing spaces  "]


# ---------------------------------------------------------------------------------------- tokenizer


def test_train_bpe_writes_hf_folder(tok_dir: Path) -> None:
    assert (tok_dir / "tokenizer.json").is_file()
    assert (tok_dir / "tokenizer_config.json").is_file()
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        BOS_TOKEN,
        EOS_TOKEN,
        PAD_TOKEN,
    )


def test_load_tokenizer(tok_dir: Path) -> None:
    tok = load_tokenizer(tok_dir)
    assert tok.vocab_size == VOCAB
    assert tok.path == tok_dir
    specials = {tok.bos_id, tok.eos_id}
    assert None not in specials and len(specials) == 2
    assert all(0 <= i < VOCAB for i in specials)
    # Loading the tokenizer.json file directly gives the same tokenizer.
    same = load_tokenizer(tok_dir / "tokenizer.json")
    assert (same.vocab_size, same.bos_id, same.eos_id, same.sha256) == (
        tok.vocab_size,
        tok.bos_id,
        tok.eos_id,
        tok.sha256,
    )
    assert tok.sha256 == hashlib.sha256((tok_dir / "tokenizer.json").read_bytes()).hexdigest()


def test_load_tokenizer_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_autotokenizer_agrees_and_adds_bos(tok_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    tok = load_tokenizer(tok_dir)
    assert len(hf) == VOCAB
    assert hf.bos_token_id == tok.bos_id
    assert hf.eos_token_id == tok.eos_id
    text = "The cat sees the moon."
    ids = tok.encode_batch([text])[0]
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert hf(text).input_ids == [tok.bos_id, *ids]  # the post-processor prepends BOS
    assert hf(text, add_special_tokens=False).input_ids == ids
    assert hf.decode(ids) == text


def test_encode_batch_and_decode_round_trip(tok_dir: Path, docs: list[str]) -> None:
    tok = load_tokenizer(tok_dir)
    encoded = tok.encode_batch(docs)
    assert len(encoded) == len(docs)
    for text, ids in zip(docs, encoded, strict=True):
        assert ids and all(0 <= i < VOCAB for i in ids)
        assert tok.bos_id not in ids and tok.eos_id not in ids
        assert tok.decode(ids) == text
    # Training merged frequent words: the in-domain text takes fewer tokens than its bytes.
    assert len(encoded[0]) < len(docs[0].encode())


def test_train_bpe_vocab_too_small(tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ["hello"])
    with pytest.raises(ValueError, match="vocab_size must be >= 259"):
        train_bpe([train], 258, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


def test_train_bpe_row_without_text(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(ValueError) as e:
        train_bpe([path], VOCAB, tmp_path / "tok")
    assert f"{path}:3:" in str(e.value)


# ---------------------------------------------------------------------------------------- tokenize


def expected_stream(tok_dir: Path, texts: list[str]) -> list[int]:
    tok = load_tokenizer(tok_dir)
    out: list[int] = []
    for ids in tok.encode_batch(texts):
        out += [tok.bos_id, *ids, tok.eos_id]
    return out


def split_documents(tokens: list[int], bos: int, eos: int) -> list[list[int]]:
    docs, current = [], None
    for t in tokens:
        if t == bos:
            assert current is None, "BOS inside a document"
            current = []
        elif t == eos:
            assert current is not None, "EOS without BOS"
            docs.append(current)
            current = None
        else:
            assert current is not None, "token outside a document"
            current.append(t)
    assert current is None, "stream ends inside a document"
    return docs


def test_tokenize_to_shards_single_shard(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "heldout.jsonl", docs)
    out = tmp_path / "shards"
    result = tokenize_to_shards([src], tok_dir, out)
    tok = load_tokenizer(tok_dir)
    expected = expected_stream(tok_dir, docs)
    assert result == {"num_documents": len(docs), "num_tokens": len(expected), "num_shards": 1}

    index = read_index(out / "index.json")
    assert index["num_documents"] == len(docs)
    assert index["num_tokens"] == len(expected)
    assert index["vocab_size"] == VOCAB
    assert (index["bos_id"], index["eos_id"]) == (tok.bos_id, tok.eos_id)
    assert index["tokenizer_sha256"] == tok.sha256
    assert index["source"]["files"] == [str(src)]

    stream = TokenStream(out / "index.json", verify_checksums=True)
    tokens = stream.window(0, len(stream)).tolist()
    assert tokens == expected
    decoded = [tok.decode(ids) for ids in split_documents(tokens, tok.bos_id, tok.eos_id)]
    assert decoded == docs


def test_tokenize_to_shards_cuts_at_document_boundaries(
    tok_dir: Path, docs: list[str], tmp_path: Path
) -> None:
    first = write_jsonl(tmp_path / "a.jsonl", docs[:30])
    second = write_jsonl(tmp_path / "b.jsonl", docs[30:])
    out = tmp_path / "shards"
    result = tokenize_to_shards([first, second], tok_dir, out, shard_tokens=100, batch_documents=3)
    tok = load_tokenizer(tok_dir)
    expected = expected_stream(tok_dir, docs)
    index = read_index(out / "index.json")
    shards = index["shards"]
    assert len(shards) == result["num_shards"] >= 3
    assert [s["file"] for s in shards] == [f"shard-{i:05d}.bin" for i in range(len(shards))]
    assert sum(s["num_documents"] for s in shards) == index["num_documents"] == len(docs)
    assert sum(s["num_tokens"] for s in shards) == index["num_tokens"] == len(expected)
    assert sorted(p.name for p in out.iterdir()) == sorted([s["file"] for s in shards] + ["index.json"])

    concatenated: list[int] = []
    for i, entry in enumerate(shards):
        path = out / entry["file"]
        header = read_header(path)
        assert header.num_tokens == entry["num_tokens"]
        assert header.num_documents == entry["num_documents"]
        shard = np.fromfile(path, dtype=header.dtype, offset=64).tolist()
        assert shard[0] == tok.bos_id and shard[-1] == tok.eos_id
        assert len(split_documents(shard, tok.bos_id, tok.eos_id)) == entry["num_documents"]
        if i < len(shards) - 1:
            assert entry["num_tokens"] >= 100
        concatenated += shard
    assert concatenated == expected


def test_tokenize_empty_input(tok_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n")
    out = tmp_path / "shards"
    with pytest.raises(ValueError) as e:
        tokenize_to_shards([src], tok_dir, out)
    assert "empty" in str(e.value).replace(str(tmp_path), "")
    assert str(src) in str(e.value)
    assert not (out / "index.json").exists()
    assert not list(out.glob("*.bin"))


def test_tokenize_missing_input(tok_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as e:
        tokenize_to_shards([missing], tok_dir, tmp_path / "shards")
    assert str(missing) in str(e.value)
    assert not (tmp_path / "shards").exists()


def test_tokenize_row_without_text(tok_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text("\n".join([json.dumps({"text": "good"}), json.dumps({"body": "bad"})]) + "\n")
    out = tmp_path / "shards"
    with pytest.raises(ValueError) as e:
        tokenize_to_shards([src], tok_dir, out)
    assert f"{src}:2:" in str(e.value)
    assert "'text'" in str(e.value) and "'body'" in str(e.value)
    assert not (out / "index.json").exists()
