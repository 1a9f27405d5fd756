"""Safetensors headers are bounds-checked: a garbled length or offset is one line naming the file, in the
reader and through the converter (no OverflowError or MemoryError)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from lmrepro.checkpoint.safetensors_io import SafetensorsReader, write_safetensors
from lmrepro.logs import run_main


def _write(path: Path) -> Path:
    tensors = [torch.arange(12, dtype=torch.float32).reshape(3, 4), torch.ones(5, dtype=torch.bfloat16)]
    entries = [("a", torch.float32, (3, 4)), ("b", torch.bfloat16, (5,))]
    write_safetensors(path, entries, tensors, {"format": "pt"})
    return path


def _with_header_len(raw: bytes, header_len: int) -> bytes:
    return struct.pack("<Q", header_len) + raw[8:]


def _with_header(raw: bytes, edit) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    return struct.pack("<Q", len(new)) + new + raw[8 + n :]


CASES = {
    "length-0xff": (
        lambda raw: _with_header_len(raw, 2**64 - 1),
        r"header length 18446744073709551615 bytes",
    ),
    "length-2^40": (lambda raw: _with_header_len(raw, 2**40), r"header length 1099511627776 bytes"),
    "length-past-end": (lambda raw: _with_header_len(raw, len(raw) - 7), r"header length \d+ bytes, but"),
    "length-zero": (lambda raw: _with_header_len(raw, 0), r"not a valid safetensors file"),
    "no-header": (lambda raw: raw[:5], r"5 bytes, no header"),
    "offset-past-end": (
        lambda raw: _with_header(raw, lambda h: h["b"].update(data_offsets=[48, 2**40])),
        r"tensor 'b' has data_offsets \[48, 1099511627776\] outside",
    ),
    "negative-offset": (
        lambda raw: _with_header(raw, lambda h: h["a"].update(data_offsets=[-8, 40])),
        r"tensor 'a' has no valid dtype, shape and data_offsets",
    ),
    "truncated-data": (lambda raw: raw[:-4], r"tensor 'b' has data_offsets \[48, 58\] outside"),
    "not-an-object": (lambda raw: struct.pack("<Q", 8) + b"[1,2,3] " + raw[8:], r"not a JSON object"),
}


@pytest.mark.parametrize("case", CASES)
def test_corrupted_header_is_one_line_naming_the_file(tmp_path: Path, case: str, capsys) -> None:
    damage, message = CASES[case]
    path = _write(tmp_path / "model.safetensors")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as e:
        SafetensorsReader(path)
    assert str(path) in str(e.value)
    with pytest.raises(SystemExit):
        run_main(lambda: SafetensorsReader(path))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_shape_that_disagrees_with_its_span_is_refused_before_allocating(tmp_path: Path) -> None:
    path = _write(tmp_path / "model.safetensors")
    path.write_bytes(_with_header(path.read_bytes(), lambda h: h["a"].update(shape=[2**30, 2**30])))
    reader = SafetensorsReader(path)  # offsets are fine: only reading the tensor can tell
    with pytest.raises(ValueError, match=r"tensor 'a' spans 48 bytes, its shape needs 4611686018427387904"):
        reader.read("a")
    assert torch.equal(reader.read("b"), torch.ones(5, dtype=torch.bfloat16))


def test_intact_file_reads_back(tmp_path: Path) -> None:
    reader = SafetensorsReader(_write(tmp_path / "model.safetensors"))
    assert torch.equal(reader.read("a"), torch.arange(12, dtype=torch.float32).reshape(3, 4))
    assert reader.metadata == {"format": "pt"}


def test_converter_names_the_corrupted_shard(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tiny_llama import make_hf_model, tiny_args

    from lmrepro.checkpoint.convert import convert_to_dcp

    make_hf_model(tiny_args(), tmp_path / "src")
    path = tmp_path / "src" / "model.safetensors"
    path.write_bytes(_with_header_len(path.read_bytes(), 2**40))
    with pytest.raises(ValueError, match=rf"{path} is not a valid safetensors file: header length"):
        convert_to_dcp("hf", tmp_path / "src", tmp_path / "dcp")
    assert not (tmp_path / "dcp").exists()
