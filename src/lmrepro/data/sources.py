"""Dataset sources: where a dataset's raw documents come from, written into results/data/{dataset}/raw/."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from lmrepro.data.synthetic import generate_corpus

log = logging.getLogger(__name__)


def _file_entry(path: Path) -> dict:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"num_bytes": path.stat().st_size, "sha256": digest}


def prepare_dataset(spec: dict, out_dir: str | Path) -> dict:
    """Write the raw splits (`{split}.jsonl`) and manifest.json; the folder appears atomically."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    source = spec["source"]
    if source == "synthetic":
        manifest = generate_corpus(
            tmp,
            seed=spec.get("seed", 1234),
            num_train_documents=spec.get("num_train_documents", 20000),
            num_heldout_documents=spec.get("num_heldout_documents", 500),
            num_mc_examples=spec.get("num_mc_examples", 200),
        )
        manifest["source"] = "synthetic"
    elif source == "local":
        files = {}
        for split, path in spec["files"].items():
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"local dataset file {path} (split {split!r}) does not exist")
            shutil.copyfile(path, tmp / f"{split}.jsonl")
            files[f"{split}.jsonl"] = {"origin": str(path.resolve()), **_file_entry(tmp / f"{split}.jsonl")}
        manifest = {"source": "local", "files": files}
    else:
        raise ValueError(f"dataset source {source!r} is not valid; valid: synthetic, local")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir)
    log.info("prepared %s: %s", out_dir, ", ".join(sorted(manifest.get("files", {}))))
    return manifest
