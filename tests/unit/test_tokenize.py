"""Unit tests for lmrepro.data.tokenizer (BPE training, loading) and lmrepro.data.encode (shards)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from lmrepro.data.encode import check_shards_match_tokenizer, split_files, tokenize_to_shards
from lmrepro.data.shards import INDEX_FILE, TokenStream, read_header, read_index
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


def sample_docs() -> list[str]:
    return sentences(60, seed=1) + ["naïve café – ünïcode €", "  leading and trailing spaces  "]


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return sample_docs()


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

    index = read_index(out / INDEX_FILE)
    assert index["num_documents"] == len(docs)
    assert index["num_tokens"] == len(expected)
    assert index["vocab_size"] == VOCAB
    assert (index["bos_id"], index["eos_id"]) == (tok.bos_id, tok.eos_id)
    assert index["tokenizer_sha256"] == tok.sha256
    assert index["source"]["files"] == [str(src)]

    stream = TokenStream(out, verify_checksums=True)
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
    result = tokenize_to_shards([first, second], tok_dir, out, piece_bytes=500, batch_documents=3)
    tok = load_tokenizer(tok_dir)
    expected = expected_stream(tok_dir, docs)
    index = read_index(out / INDEX_FILE)
    shards = index["shards"]
    assert len(shards) == result["num_shards"] >= 4  # pieces of ~500 bytes, never across files
    assert [s["file"] for s in shards] == [f"shard-{i:05d}.bin" for i in range(len(shards))]
    assert sum(s["num_documents"] for s in shards) == index["num_documents"] == len(docs)
    assert sum(s["num_tokens"] for s in shards) == index["num_tokens"] == len(expected)
    assert sorted(p.name for p in out.iterdir()) == sorted([s["file"] for s in shards] + [INDEX_FILE])
    assert not (tmp_path / ".work-shards").exists()  # the work folder goes once the output is complete

    concatenated: list[int] = []
    for entry in shards:
        path = out / entry["file"]
        header = read_header(path)
        assert header.num_tokens == entry["num_tokens"]
        assert header.num_documents == entry["num_documents"]
        shard = np.fromfile(path, dtype=header.dtype, offset=64).tolist()
        assert shard[0] == tok.bos_id and shard[-1] == tok.eos_id
        assert len(split_documents(shard, tok.bos_id, tok.eos_id)) == entry["num_documents"]
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
    assert not (out / INDEX_FILE).exists()
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
    assert not (out / INDEX_FILE).exists()


def test_row_error_in_a_later_piece_names_the_file_line(tok_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"document {i} " * 5}) for i in range(40)]
    lines[33] = "{not json"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError) as e:
        tokenize_to_shards([src], tok_dir, tmp_path / "shards", piece_bytes=300)
    assert f"{src}:34: not valid JSON" in str(e.value)


# ---------------------------------------------------------------------------- formats and the raw/ manifest


def write_formats(root: Path, texts: list[str]) -> dict[str, Path]:
    """The same documents as JSONL, gzipped JSONL, Parquet (several row groups) and Arrow (file, stream)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"id": list(range(len(texts))), "content": texts})
    paths = {"jsonl": write_jsonl(root / "d.jsonl", texts, key="content")}
    paths["jsonl.gz"] = root / "d.jsonl.gz"
    paths["jsonl.gz"].write_bytes(gzip.compress(paths["jsonl"].read_bytes()))
    paths["parquet"] = root / "d.parquet"
    pq.write_table(table, paths["parquet"], row_group_size=7)
    paths["arrow-file"] = root / "file.arrow"
    with pa.ipc.new_file(paths["arrow-file"], table.schema) as writer:
        writer.write_table(table, max_chunksize=5)
    paths["arrow-stream"] = root / "stream.arrow"
    with pa.ipc.new_stream(paths["arrow-stream"], table.schema) as writer:
        writer.write_table(table, max_chunksize=5)
    return paths


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet", "arrow-file", "arrow-stream"])
def test_formats_give_the_same_stream(tok_dir: Path, docs: list[str], tmp_path: Path, fmt: str) -> None:
    path = write_formats(tmp_path / "data", docs)[fmt]
    out = tmp_path / "shards"
    result = tokenize_to_shards([path], tok_dir, out, text_field="content", piece_bytes=400)
    stream = TokenStream(out, verify_checksums=True)
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, docs)
    if fmt in ("jsonl", "parquet", "arrow-file", "arrow-stream"):
        assert result["num_shards"] > 1  # cut into pieces
    assert read_index(out / INDEX_FILE)["source"]["text_field"] == "content"


def test_text_files_are_one_document_each(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    files = []
    for i, text in enumerate(docs[:5]):
        files.append(tmp_path / f"doc{i}.txt")
        files[-1].write_text(text)
    tokenize_to_shards(files, tok_dir, tmp_path / "shards")
    stream = TokenStream(tmp_path / "shards")
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, docs[:5])


def test_missing_text_column_names_the_file(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    path = write_formats(tmp_path / "data", docs)["parquet"]
    with pytest.raises(ValueError) as e:
        tokenize_to_shards([path], tok_dir, tmp_path / "shards")
    assert str(path) in str(e.value) and "'text'" in str(e.value) and "content" in str(e.value)


def test_unsupported_file_type(tok_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("text\nhello\n")
    with pytest.raises(ValueError, match=r"data\.csv: unsupported file type"):
        tokenize_to_shards([path], tok_dir, tmp_path / "shards")


def test_split_files_from_manifest(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    manifest = {
        "splits": {"train": {"files": ["snapshot/a.parquet", "/abs/b.parquet"]}},
        "text_field": "body",
    }
    (raw / "manifest.json").write_text(json.dumps(manifest))
    assert split_files(raw, "train") == ([raw / "snapshot/a.parquet", Path("/abs/b.parquet")], "body")
    with pytest.raises(ValueError, match=r"no split 'heldout'; valid: \['train'\]"):
        split_files(raw, "heldout")
    # A raw/ folder of an earlier lmrepro: {split}.jsonl files listed under "files" only.
    (raw / "manifest.json").write_text(json.dumps({"files": {"train.jsonl": {}, "mc.jsonl": {}}}))
    assert split_files(raw, "train") == ([raw / "train.jsonl"], "text")


# ---------------------------------------------------------------------------------- parallel and restart


def test_parallel_encoding_gives_the_same_shards(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", docs * 4)
    one = tokenize_to_shards([src], tok_dir, tmp_path / "one", piece_bytes=2000)
    two = tokenize_to_shards([src], tok_dir, tmp_path / "two", piece_bytes=2000, num_proc=2)
    assert one == two and one["num_shards"] >= 3
    index_one, index_two = (
        read_index(tmp_path / "one" / INDEX_FILE),
        read_index(tmp_path / "two" / INDEX_FILE),
    )
    assert index_one["shards"] == index_two["shards"]  # same files, tokens, documents and sha256


def _bad_second_file(tmp_path: Path, docs: list[str]) -> list[Path]:
    good = write_jsonl(tmp_path / "a.jsonl", docs)
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    return [good, bad]


def test_finished_shards_survive_a_failure(
    tok_dir: Path, docs: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = _bad_second_file(tmp_path, docs)
    out, work = tmp_path / "shards", tmp_path / ".work-shards"
    with pytest.raises(ValueError, match=r"b\.jsonl:2:"):
        tokenize_to_shards(files, tok_dir, out, piece_bytes=1000)
    assert not out.exists()  # nothing that looks complete
    kept = sorted(work.glob("shard-*.bin"))
    assert len(kept) >= 2  # the pieces of a.jsonl were finished before b.jsonl failed
    inodes = {p.name: p.stat().st_ino for p in kept}
    mtimes = {p.name: p.stat().st_mtime_ns for p in kept}

    files[1].write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": "fixed"}) + "\n")
    caplog.set_level("INFO", logger="lmrepro.data.encode")
    tokenize_to_shards(files, tok_dir, out, piece_bytes=1000)
    assert f"{len(kept)} shards kept from a failed attempt" in caplog.text
    assert not work.exists()
    # The kept shards were moved, not re-encoded: same inode and modification time.
    index = read_index(out / INDEX_FILE)
    moved = {e["file"]: out / e["file"] for e in index["shards"][: len(kept)]}
    assert sorted(p.stat().st_ino for p in moved.values()) == sorted(inodes.values())
    assert sorted(p.stat().st_mtime_ns for p in moved.values()) == sorted(mtimes.values())
    stream = TokenStream(out, verify_checksums=True)
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, [*docs, "fine", "fixed"])


def test_corrupted_kept_shard_is_encoded_again(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    files = _bad_second_file(tmp_path, docs)
    out, work = tmp_path / "shards", tmp_path / ".work-shards"
    with pytest.raises(ValueError):
        tokenize_to_shards(files, tok_dir, out, piece_bytes=1000)
    first = work / "shard-00000.bin"
    data = bytearray(first.read_bytes())
    data[70] ^= 0xFF  # a flipped token byte: the header is fine, the checksum is not
    first.write_bytes(bytes(data))
    (work / "shard-00001.bin").write_bytes(b"NOTASHARD" * 10)  # a foreign header
    files[1].write_text(json.dumps({"text": "fixed"}) + "\n")
    tokenize_to_shards(files, tok_dir, out, piece_bytes=1000)
    stream = TokenStream(out, verify_checksums=True)
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, [*docs, "fixed"])


def test_shards_of_changed_input_are_encoded_again(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    files = _bad_second_file(tmp_path, docs)
    out, work = tmp_path / "shards", tmp_path / ".work-shards"
    with pytest.raises(ValueError):
        tokenize_to_shards(files, tok_dir, out, piece_bytes=1000)
    stale = work / "shard-00000.bin"
    assert stale.is_file()
    write_jsonl(files[0], list(reversed(docs)))  # the first file changed: its old shards are stale
    files[1].write_text(json.dumps({"text": "fixed"}) + "\n")
    tokenize_to_shards(files, tok_dir, out, piece_bytes=1000)
    stream = TokenStream(out)
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, [*reversed(docs), "fixed"])


def test_token_id_outside_the_vocabulary_is_an_error(tok_dir: Path, tmp_path: Path) -> None:
    """An encoder that returns an id >= vocab_size stops with the shard and the source piece named."""
    from lmrepro.data.encode import TextEncoder, _encode_piece
    from lmrepro.data.readers import plan_pieces

    class Broken:
        vocab_size, bos_id, eos_id, sha256 = 300, 0, 1, "0"

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[5, 70000] for _ in texts]

    src = write_jsonl(tmp_path / "d.jsonl", ["a", "b"])
    (piece,) = plan_pieces([src], 1 << 20)
    with pytest.raises(ValueError) as e:
        _encode_piece(TextEncoder(Broken(), "text", 16), 0, "key", piece, 0, tmp_path)  # type: ignore[arg-type]
    assert "token id 70000 out of range for vocab_size 300" in str(e.value)
    assert str(src) in str(e.value) and "shard-00000.bin" in str(e.value)


def test_empty_file_among_others_makes_no_shard(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    src = write_jsonl(tmp_path / "d.jsonl", docs)
    result = tokenize_to_shards([empty, src], tok_dir, tmp_path / "shards")
    assert result["num_shards"] == 1
    assert read_index(tmp_path / "shards" / INDEX_FILE)["shards"][0]["file"] == "shard-00000.bin"


# ------------------------------------------------------------------------- shards vs the run's tokenizer


def test_shards_must_match_the_tokenizer(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", docs)
    tokenize_to_shards([src], tok_dir, tmp_path / "shards")
    index_path = tmp_path / "shards" / INDEX_FILE
    assert check_shards_match_tokenizer(index_path, tok_dir)["num_documents"] == len(docs)
    other = train_bpe([write_jsonl(tmp_path / "o.jsonl", sentences(200, seed=5))], VOCAB + 20, tmp_path / "o")
    with pytest.raises(ValueError) as e:
        check_shards_match_tokenizer(index_path, other)
    msg = str(e.value)
    assert str(index_path) in msg and str(other) in msg
    assert "tokenizer_sha256" in msg and f"vocab_size: shards {VOCAB}, tokenizer {VOCAB + 20}" in msg


def test_jsonl_edge_cases(tok_dir: Path, tmp_path: Path) -> None:
    """A raw U+2028 inside a JSON string is not a line break; invalid UTF-8 is named with its byte."""
    odd = "line\u2028separator and paragraph\u2029separator"
    src = tmp_path / "d.jsonl"
    src.write_text(json.dumps({"text": odd}, ensure_ascii=False) + "\n" + json.dumps({"text": "x"}) + "\n")
    tokenize_to_shards([src], tok_dir, tmp_path / "shards")
    stream = TokenStream(tmp_path / "shards")
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, [odd, "x"])

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(ValueError, match=rf"{bad}: not UTF-8 at byte 25"):
        tokenize_to_shards([bad], tok_dir, tmp_path / "bad-shards")


def test_zstd_jsonl_needs_zstandard(tok_dir: Path, docs: list[str], tmp_path: Path) -> None:
    try:
        import zstandard
    except ImportError:
        path = tmp_path / "d.jsonl.zst"
        path.write_bytes(b"\x28\xb5\x2f\xfd")
        with pytest.raises(ValueError, match=r"d\.jsonl\.zst: reading \.zst files needs the `zstandard`"):
            tokenize_to_shards([path], tok_dir, tmp_path / "shards")
        return
    path = tmp_path / "d.jsonl.zst"
    path.write_bytes(
        zstandard.ZstdCompressor().compress(write_jsonl(tmp_path / "d.jsonl", docs).read_bytes())
    )
    tokenize_to_shards([path], tok_dir, tmp_path / "shards")
    stream = TokenStream(tmp_path / "shards")
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok_dir, docs)
