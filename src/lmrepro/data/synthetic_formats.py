"""Stand-ins for the seeds' text corpora in their own file formats (``datasets.<name>.layout``), filled with
the documents of the embedded corpus (``lmrepro.data.synthetic``: the same seed, the same files).

- ``fineweb_edu``: Parquet with FineWeb-Edu's columns (``text``, ``id``, ``dump``, ``url``, ``file_path``,
  ``language``, ``language_score``, ``token_count``, ``score``, ``int_score``), ``train`` and ``heldout``
  (build-nanogpt takes its validation shard from the same files), plus the corpus's HellaSwag-schema
  ``mc.jsonl`` of the same world (training-custom-llama scores HellaSwag);
- ``zyda``: Parquet with Zyda-2's ``text`` column (torchtitan-mlm reads only that one) and a ``nemo_id``;
- ``proof_pile``: Proof-Pile-2's JSON lines ``{"text", "meta"}``, zstandard-compressed (``.jsonl.zst``),
  ``train`` and ``validation``.

Parquet is written by ``datasets`` (as the Hub's files are), ``.zst`` by ``zstandard``.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from lmrepro.data.synthetic import generate_corpus

LAYOUT_SPLITS = {
    "fineweb_edu": ("train", "heldout", "mc"),
    "zyda": ("train", "heldout"),
    "proof_pile": ("train", "validation"),
}


def write(
    out_dir: str | Path, layout: str, *, seed: int, num_train: int, num_heldout: int, num_mc: int
) -> dict:
    """Write one layout's split files into out_dir; returns {split: file name}."""
    out = Path(out_dir)
    corpus_dir = out / ".corpus"
    generate_corpus(
        corpus_dir, seed=seed, num_train_documents=num_train, num_heldout_documents=num_heldout,
        num_mc_examples=num_mc,
    )  # fmt: skip
    texts = {split: _texts(corpus_dir / f"{split}.jsonl") for split in ("train", "heldout")}
    if layout == "fineweb_edu":
        files = {split: _fineweb_parquet(out / f"{split}.parquet", t, seed) for split, t in texts.items()}
        files["mc"] = shutil.copy(corpus_dir / "mc.jsonl", out / "mc.jsonl")
    elif layout == "zyda":
        files = {split: _zyda_parquet(out / f"{split}.parquet", t, seed) for split, t in texts.items()}
    elif layout == "proof_pile":
        files = {
            split: _proof_pile_zst(out / f"{split}.jsonl.zst", texts[source], seed, split)
            for split, source in (("train", "train"), ("validation", "heldout"))
        }
    else:
        raise ValueError(f"layout = {layout!r} is not a stand-in layout; valid: {', '.join(LAYOUT_SPLITS)}")
    shutil.rmtree(corpus_dir)
    return {split: Path(path).name for split, path in files.items()}


def _texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def _doc_id(seed: int, i: int) -> str:
    return f"<urn:uuid:{uuid.UUID(int=(seed << 64) + i)}>"


def _fineweb_parquet(path: Path, texts: list[str], seed: int) -> Path:
    from datasets import Dataset

    n = len(texts)
    rows = {
        "text": texts,
        "id": [_doc_id(seed, i) for i in range(n)],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://standin.example/{seed}/{i}" for i in range(n)],
        "file_path": [f"s3://commoncrawl/crawl-data/CC-MAIN-2024-10/standin-{seed}.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": [0.9 + 0.1 * ((i * 7) % 10) / 10 for i in range(n)],
        "token_count": [len(t.split()) for t in texts],
        "score": [2.5 + ((i * 3) % 25) / 10 for i in range(n)],
        "int_score": [3 + ((i * 3) % 25) // 10 for i in range(n)],
    }
    Dataset.from_dict(rows).to_parquet(str(path))
    return path


def _zyda_parquet(path: Path, texts: list[str], seed: int) -> Path:
    from datasets import Dataset

    Dataset.from_dict({"nemo_id": [f"{seed}-{i}" for i in range(len(texts))], "text": texts}).to_parquet(
        str(path)
    )
    return path


def _proof_pile_zst(path: Path, texts: list[str], seed: int, split: str) -> Path:
    import zstandard

    lines = "".join(
        json.dumps({"text": t, "meta": {"set": split, "id": f"{seed}-{i}"}}) + "\n"
        for i, t in enumerate(texts)
    )
    path.write_bytes(zstandard.ZstdCompressor(level=3).compress(lines.encode()))
    return path
