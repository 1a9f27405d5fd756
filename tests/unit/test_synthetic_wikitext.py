"""The WikiText-2 stand-in: the wikitext-2-raw-v1 schema and line style, deterministic in its seed, and
prepared as a dataset whose splits are train / validation / test."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from lmrepro.data.sources import prepare_dataset, split_files
from lmrepro.data.synthetic_wikitext import write


def _texts(paths: dict) -> dict[str, list[str]]:
    return {split: pq.read_table(path).column("text").to_pylist() for split, path in paths.items()}


def test_schema_style_and_determinism(tmp_path) -> None:
    first = _texts(write(tmp_path / "a", seed=3, num_train_articles=6, num_heldout_articles=2))
    assert first == _texts(write(tmp_path / "b", seed=3, num_train_articles=6, num_heldout_articles=2))
    assert first != _texts(write(tmp_path / "c", seed=4, num_train_articles=6, num_heldout_articles=2))
    assert set(first) == {"train", "validation", "test"}
    assert pq.read_schema(tmp_path / "a" / "train.parquet").names == ["text"]
    train = first["train"]
    titles = [line for line in train if line.startswith(" = ") and not line.startswith(" = = ")]
    assert len(titles) == 6 and all(t.endswith(" = \n") for t in titles)
    sections = [line for line in train if line.startswith(" = = ")]
    assert sections and all(s.endswith(" = = \n") for s in sections)
    paragraphs = [line for line in train if line and line not in titles + sections]
    assert all(p.startswith(" ") and p.endswith(" \n") and " . " in p for p in paragraphs)
    assert "" in train and all(
        train[i - 1] == "" == train[i + 1] for i, line in enumerate(train) if line in sections
    )
    assert first["validation"] != first["test"]


def test_prepared_as_a_dataset_with_validation_and_test_splits(tmp_path) -> None:
    spec = {"source": "synthetic", "layout": "wikitext", "seed": 1, "num_train_documents": 3,
            "num_heldout_documents": 1}  # fmt: skip
    manifest = prepare_dataset(spec, tmp_path / "raw", name="wikitext")
    assert sorted(manifest["splits"]) == ["test", "train", "validation"]
    assert manifest["layout"] == "wikitext" and manifest["text_field"] == "text"
    files, field = split_files(tmp_path / "raw", "validation")
    assert [f.name for f in files] == ["validation.parquet"] and field == "text"
    assert json.loads((tmp_path / "raw" / "manifest.json").read_text())["files"]["train.parquet"]["sha256"]
    with pytest.raises(ValueError, match="num_train_documents"):
        write(tmp_path / "bad", seed=0, num_train_articles=0, num_heldout_articles=1)
