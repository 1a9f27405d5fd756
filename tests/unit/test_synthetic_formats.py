"""The stand-in corpora in the seeds' formats (datasets.<name>.layout): their columns, their compression,
determinism, and the same documents as the embedded corpus, read back through prepare_dataset's manifest."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import zstandard

from lmrepro.data.readers import iter_piece_texts, plan_pieces
from lmrepro.data.sources import prepare_dataset, split_files
from lmrepro.data.synthetic import generate_corpus

FINEWEB_COLUMNS = ["text", "id", "dump", "url", "file_path", "language", "language_score"]
FINEWEB_COLUMNS += ["token_count", "score", "int_score"]


def texts_of(raw, split) -> list[str]:
    files, field = split_files(raw, split)
    return [t for piece in plan_pieces(files, 1 << 30) for t in iter_piece_texts(piece, field)]


@pytest.mark.parametrize(
    ("layout", "files"),
    [
        ("fineweb_edu", {"train": "train.parquet", "heldout": "heldout.parquet", "mc": "mc.jsonl"}),
        ("zyda", {"train": "train.parquet", "heldout": "heldout.parquet"}),
        ("proof_pile", {"train": "train.jsonl.zst", "validation": "validation.jsonl.zst"}),
    ],
)
def test_layouts_hold_the_corpus_in_the_seeds_format(tmp_path, layout: str, files: dict) -> None:
    spec = {"source": "synthetic", "layout": layout, "seed": 5, "num_train_documents": 30,
            "num_heldout_documents": 6, "num_mc_examples": 4}  # fmt: skip
    manifest = prepare_dataset(spec, tmp_path / "raw")
    again = prepare_dataset(spec, tmp_path / "again")
    assert {s: e["files"] for s, e in manifest["splits"].items()} == {s: [f] for s, f in files.items()}
    assert manifest["files"] == again["files"]  # same seed, byte-identical files (sha256 in the manifest)
    generate_corpus(
        tmp_path / "corpus", seed=5, num_train_documents=30, num_heldout_documents=6, num_mc_examples=4
    )
    corpus = [
        json.loads(line)["text"] for line in (tmp_path / "corpus" / "train.jsonl").read_text().splitlines()
    ]
    assert texts_of(tmp_path / "raw", "train") == corpus
    train = tmp_path / "raw" / files["train"]
    if layout == "fineweb_edu":
        assert pq.read_schema(train).names == FINEWEB_COLUMNS
    elif layout == "zyda":
        assert pq.read_schema(train).names == ["nemo_id", "text"]
    else:
        rows = [json.loads(line) for line in zstandard.decompress(train.read_bytes()).decode().splitlines()]
        assert set(rows[0]) == {"text", "meta"} and len(rows) == 30
