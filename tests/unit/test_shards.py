"""Unit tests for lmrepro.data.shards: the binary shard format, the index file and TokenStream."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from lmrepro.data.shards import (
    FORMAT_VERSION,
    HEADER_BYTES,
    INDEX_FILE,
    INDEX_FORMAT,
    MAGIC,
    TokenStream,
    dtype_for_vocab,
    read_header,
    read_index,
    read_shard,
    write_index,
    write_shard,
)
from lmrepro.io import file_sha256

VOCAB = 1000


def make_stream_folder(folder: Path, sizes: list[int], vocab_size: int = VOCAB, seed: int = 0) -> np.ndarray:
    """Write one shard per size plus the index file; return the concatenated tokens."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    entries, parts = [], []
    for i, size in enumerate(sizes):
        tokens = rng.integers(0, vocab_size, size=size)
        name = f"shard-{i:05d}.bin"
        digest = write_shard(folder / name, tokens, vocab_size=vocab_size, num_documents=i + 1)
        entries.append({"file": name, "num_tokens": size, "num_documents": i + 1, "sha256": digest})
        parts.append(tokens)
    write_index(
        folder,
        entries,
        vocab_size=vocab_size,
        bos_id=1,
        eos_id=2,
        tokenizer_sha256="ab" * 32,
        source={"files": ["train.jsonl"]},
    )
    return np.concatenate(parts)


# -------------------------------------------------------------------------------------- one shard


def test_dtype_for_vocab_boundaries() -> None:
    assert dtype_for_vocab(1) == np.dtype("<u2")
    assert dtype_for_vocab(65536) == np.dtype("<u2")
    assert dtype_for_vocab(65537) == np.dtype("<u4")
    assert dtype_for_vocab(2**32) == np.dtype("<u4")
    with pytest.raises(ValueError, match="does not fit"):
        dtype_for_vocab(2**32 + 1)


@pytest.mark.parametrize(("vocab_size", "itemsize"), [(65536, 2), (65537, 4), (128256, 4), (300, 2)])
def test_round_trip_and_dtype(tmp_path: Path, vocab_size: int, itemsize: int) -> None:
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, vocab_size, size=1001)
    tokens[0], tokens[-1] = 0, vocab_size - 1  # both extremes of the id range
    path = tmp_path / "s.bin"
    digest = write_shard(path, tokens, vocab_size=vocab_size, num_documents=7)

    header = read_header(path)
    assert header.version == FORMAT_VERSION
    assert header.dtype.itemsize == itemsize
    assert header.num_tokens == 1001
    assert header.vocab_size == vocab_size
    assert header.num_documents == 7
    assert path.stat().st_size == HEADER_BYTES + 1001 * itemsize

    data = read_shard(path)
    assert data.dtype == header.dtype
    np.testing.assert_array_equal(np.asarray(data, dtype=np.int64), tokens)
    with pytest.raises(ValueError):  # read-only memory map
        data[0] = 1
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_header_layout_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    write_shard(path, np.array([5, 6, 7]), vocab_size=70000, num_documents=2)
    raw = path.read_bytes()
    assert raw[:8] == MAGIC
    version, code, num_tokens, vocab, docs = struct.unpack("<IIQQQ", raw[8:40])
    assert (version, code, num_tokens, vocab, docs) == (FORMAT_VERSION, 32, 3, 70000, 2)
    assert raw[40:HEADER_BYTES] == b"\0" * (HEADER_BYTES - 40)
    assert np.frombuffer(raw[HEADER_BYTES:], dtype="<u4").tolist() == [5, 6, 7]


def test_empty_shard_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    write_shard(path, np.empty(0, dtype=np.int64), vocab_size=VOCAB, num_documents=0)
    assert read_header(path).num_tokens == 0
    assert len(read_shard(path)) == 0


def test_token_id_too_large_names_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    with pytest.raises(ValueError) as e:
        write_shard(path, np.array([0, 5, VOCAB]), vocab_size=VOCAB, num_documents=1)
    assert str(path) in str(e.value)
    assert f"token id {VOCAB}" in str(e.value)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_negative_token_id_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "neg.bin"
    with pytest.raises(ValueError) as e:
        write_shard(path, np.array([3, -1]), vocab_size=VOCAB, num_documents=1)
    assert str(path) in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_negative_token_id_message_names_the_negative_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token id -1"):
        write_shard(tmp_path / "neg.bin", np.array([3, -1]), vocab_size=VOCAB, num_documents=1)


def test_no_temp_files_left_after_write(tmp_path: Path) -> None:
    write_shard(tmp_path / "a.bin", np.arange(10), vocab_size=VOCAB, num_documents=1)
    # Overwriting an existing shard also goes through a temp file + rename.
    write_shard(tmp_path / "a.bin", np.arange(20), vocab_size=VOCAB, num_documents=2)
    make_stream_folder(tmp_path / "folder", [5, 6])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "folder"]
    assert sorted(p.name for p in (tmp_path / "folder").iterdir()) == [
        INDEX_FILE,
        "shard-00000.bin",
        "shard-00001.bin",
    ]
    assert read_header(tmp_path / "a.bin").num_tokens == 20


def test_npy_file_is_refused_with_path(tmp_path: Path) -> None:
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(100, dtype=np.uint16))
    with pytest.raises(ValueError) as e:
        read_header(path)
    assert str(path) in str(e.value)
    assert "not an lmrepro token shard" in str(e.value)
    with pytest.raises(ValueError, match="bad magic"):
        read_shard(path)


def test_random_bytes_and_tiny_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ValueError, match="not an lmrepro token shard"):
        read_header(path)
    tiny = tmp_path / "tiny.bin"
    tiny.write_bytes(b"LMR")
    with pytest.raises(ValueError, match="tiny.bin"):
        read_header(tiny)


def test_missing_shard(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_header(tmp_path / "nope.bin")


def _patch(path: Path, offset: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_wrong_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(10), vocab_size=VOCAB, num_documents=1)
    _patch(path, 8, struct.pack("<I", FORMAT_VERSION + 1))
    with pytest.raises(ValueError) as e:
        read_header(path)
    assert str(path) in str(e.value)
    assert f"version {FORMAT_VERSION + 1}" in str(e.value)


def test_unknown_dtype_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(10), vocab_size=VOCAB, num_documents=1)
    _patch(path, 12, struct.pack("<I", 8))
    with pytest.raises(ValueError, match="unknown dtype code 8"):
        read_header(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100), vocab_size=VOCAB, num_documents=1)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError) as e:
        read_shard(path)
    msg = str(e.value)
    assert str(path) in msg
    rest = msg.replace(str(path), "")  # tmp_path itself contains the test's name
    assert "truncated" in rest
    assert "100 tokens" in rest


def test_file_with_trailing_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100), vocab_size=VOCAB, num_documents=1)
    with path.open("ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError) as e:
        read_header(path)
    assert "file is 266 bytes but its header promises 100 tokens (264 bytes)" in str(e.value)


def test_truncated_inside_header_says_truncated(tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    write_shard(path, np.arange(100), vocab_size=VOCAB, num_documents=1)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError) as e:
        read_header(path)
    assert "truncated" in str(e.value).replace(str(path), "")  # tmp_path contains the test's name


# ------------------------------------------------------------------------------------------- index


def test_write_and_read_index(tmp_path: Path) -> None:
    tokens = make_stream_folder(tmp_path, [10, 20, 30])
    index = read_index(tmp_path / INDEX_FILE)
    assert index["format"] == INDEX_FORMAT
    assert index["version"] == FORMAT_VERSION
    assert index["dtype"] == "uint16"
    assert index["vocab_size"] == VOCAB
    assert (index["bos_id"], index["eos_id"]) == (1, 2)
    assert index["num_tokens"] == 60 == tokens.size
    assert index["num_documents"] == 1 + 2 + 3
    assert [s["file"] for s in index["shards"]] == ["shard-00000.bin", "shard-00001.bin", "shard-00002.bin"]
    assert index["source"] == {"files": ["train.jsonl"]}
    # It is plain JSON on disk.
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == index


def test_read_index_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="index.json"):
        read_index(tmp_path / INDEX_FILE)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "something-else", "shards": []}))
    with pytest.raises(ValueError, match="not an lmrepro shard index"):
        read_index(other)


# ------------------------------------------------------------------------------------- TokenStream


def test_token_stream_windows_across_shard_boundaries(tmp_path: Path) -> None:
    tokens = make_stream_folder(tmp_path, [7, 13, 5])
    stream = TokenStream(tmp_path)
    assert len(stream) == 25
    assert (stream.vocab_size, stream.bos_id, stream.eos_id) == (VOCAB, 1, 2)
    for start in range(25):
        for length in range(0, 26 - start):
            window = stream.window(start, length)
            assert window.dtype == np.int64
            np.testing.assert_array_equal(window, tokens[start : start + length])


def test_token_stream_whole_stream_and_edges(tmp_path: Path) -> None:
    tokens = make_stream_folder(tmp_path, [100, 1, 50])
    stream = TokenStream(tmp_path, verify_checksums=True)
    np.testing.assert_array_equal(stream.window(0, 151), tokens)
    np.testing.assert_array_equal(stream.window(99, 3), tokens[99:102])  # spans the 1-token shard
    np.testing.assert_array_equal(stream.window(100, 1), tokens[100:101])


def test_token_stream_with_an_empty_shard_in_the_middle(tmp_path: Path) -> None:
    tokens = make_stream_folder(tmp_path, [4, 0, 6])
    stream = TokenStream(tmp_path)
    np.testing.assert_array_equal(stream.window(2, 6), tokens[2:8])
    np.testing.assert_array_equal(stream.window(4, 6), tokens[4:10])


@pytest.mark.parametrize(("start", "length"), [(-1, 2), (24, 2), (0, 26), (30, 1)])
def test_out_of_range_window(tmp_path: Path, start: int, length: int) -> None:
    make_stream_folder(tmp_path, [7, 13, 5])
    stream = TokenStream(tmp_path)
    with pytest.raises(IndexError, match="outside stream of 25 tokens"):
        stream.window(start, length)


def _edit_index(folder: Path, edit) -> None:
    path = folder / INDEX_FILE
    index = json.loads(path.read_text())
    edit(index)
    path.write_text(json.dumps(index))


def test_index_vocab_disagrees_with_header(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [7, 13])
    _edit_index(tmp_path, lambda ix: ix.update(vocab_size=VOCAB + 1))
    with pytest.raises(ValueError) as e:
        TokenStream(tmp_path)
    assert "shard-00000.bin" in str(e.value)
    assert "disagrees" in str(e.value)


def test_index_token_count_disagrees_with_header(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [7, 13])
    _edit_index(tmp_path, lambda ix: ix["shards"][1].update(num_tokens=12))
    with pytest.raises(ValueError, match=r"shard-00001\.bin: header \(13 tokens"):
        TokenStream(tmp_path)


def test_missing_shard_listed_in_index(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [7, 13])
    (tmp_path / "shard-00001.bin").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.bin"):
        TokenStream(tmp_path)


def test_verify_checksums_detects_flipped_byte(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [7, 13, 5])
    path = tmp_path / "shard-00001.bin"
    raw = bytearray(path.read_bytes())
    raw[HEADER_BYTES + 3] ^= 0x01  # a token byte: header stays valid, size unchanged
    path.write_bytes(bytes(raw))
    TokenStream(tmp_path, verify_checksums=False)  # the header checks alone still pass
    with pytest.raises(ValueError) as e:
        TokenStream(tmp_path)  # verified by default
    assert "shard-00001.bin" in str(e.value) and str(tmp_path / INDEX_FILE) in str(e.value)
    assert "sha256 does not match" in str(e.value)


def test_zeroed_tokens_of_the_same_size_are_refused_naming_shard_and_index(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [7, 13, 5])
    path = tmp_path / "shard-00002.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:HEADER_BYTES] + bytes(len(raw) - HEADER_BYTES))  # the "loss 0.0000" case
    with pytest.raises(ValueError, match=r"shard-00002\.bin: sha256 does not match .*index\.json"):
        TokenStream(tmp_path)


def test_truncated_or_zeroed_header_is_refused_naming_the_shard(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [7, 13, 5])
    path = tmp_path / "shard-00001.bin"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"shard-00001\.bin: file is .* truncated"):
        TokenStream(tmp_path)
    path.write_bytes(bytes(HEADER_BYTES + 26))
    with pytest.raises(ValueError, match=r"shard-00001\.bin is not an lmrepro token shard"):
        TokenStream(tmp_path)


def test_each_shard_is_hashed_once_per_process_until_it_changes(tmp_path: Path, monkeypatch) -> None:
    from lmrepro.data import shards

    make_stream_folder(tmp_path, [7, 13])
    hashed = []
    monkeypatch.setattr(shards, "file_sha256", lambda p: hashed.append(p.name) or file_sha256(p))
    TokenStream(tmp_path)
    TokenStream(tmp_path)  # e.g. validation after the training loader: no second pass over the bytes
    assert sorted(hashed) == ["shard-00000.bin", "shard-00001.bin"]
    path = tmp_path / "shard-00001.bin"
    path.write_bytes(path.read_bytes())  # rewritten: a new mtime, hashed again
    TokenStream(tmp_path)
    assert sorted(hashed) == ["shard-00000.bin", "shard-00001.bin", "shard-00001.bin"]


def test_ranks_split_the_verification(tmp_path: Path, monkeypatch) -> None:
    from lmrepro.data import shards

    make_stream_folder(tmp_path, [7, 13, 5])
    hashed = []
    monkeypatch.setattr(shards, "file_sha256", lambda p: hashed.append(p.name) or file_sha256(p))
    TokenStream(tmp_path, verify_share=(1, 2))
    assert hashed == ["shard-00001.bin"]
    TokenStream(tmp_path, verify_share=(0, 2))
    assert sorted(hashed) == ["shard-00000.bin", "shard-00001.bin", "shard-00002.bin"]


def test_token_stream_takes_the_folder_and_writes_the_index_as_before(tmp_path: Path) -> None:
    make_stream_folder(tmp_path, [3, 4])
    stream = TokenStream(tmp_path)
    assert stream.index_path == tmp_path / INDEX_FILE == tmp_path / "index.json"
    raw = (tmp_path / INDEX_FILE).read_text()
    assert raw == json.dumps(json.loads(raw), indent=2) + "\n"  # the format written before lmrepro.io
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
