"""What checksum verification costs: sha256 of token shards (what index.json records) against reading the
same bytes, and xxh3-128 of a DCP checkpoint (its checksums.json) against the save and the load it guards,
with sha256 of the same files for comparison, in the same run.

    nice python benchmarks/integrity/bench_integrity.py --out benchmarks/integrity/results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmrepro.checkpoint import checksums, dcp
from lmrepro.data import shards
from lmrepro.data.shards import TokenStream, write_index, write_shard
from lmrepro.io import file_sha256


def best_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def read_all(paths: list[Path], chunk_bytes: int = 1 << 20) -> None:
    """Plain reading, in the chunks file_sha256 reads: the floor any verification pays."""
    for path in paths:
        with open(path, "rb") as f:
            while f.read(chunk_bytes):
                pass


def bench_shards(root: Path, total_tokens: int, num_shards: int, repeats: int) -> dict:
    folder = root / "shards"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(num_shards):
        tokens = rng.integers(0, 50_000, total_tokens // num_shards, dtype=np.uint16)
        name = f"shard-{i:05d}.bin"
        digest = write_shard(folder / name, tokens, vocab_size=50_000, num_documents=1)
        entries.append({"file": name, "num_tokens": int(tokens.size), "num_documents": 1, "sha256": digest})
    write_index(
        folder, entries, vocab_size=50_000, bos_id=None, eos_id=0, tokenizer_sha256="0" * 64, source={}
    )
    paths = [folder / e["file"] for e in entries]
    nbytes = sum(p.stat().st_size for p in paths)
    read_all(paths)  # into the page cache: the figures are CPU cost, not the disk's

    def open_verified() -> None:
        shards._verified.clear()
        TokenStream(folder)

    read_s = best_s(lambda: read_all(paths), repeats)
    open_s = best_s(lambda: TokenStream(folder, verify_checksums=False), repeats)
    verify_s = best_s(open_verified, repeats)
    cached_s = best_s(lambda: TokenStream(folder), repeats)  # verified earlier in this process
    return {
        "shards": num_shards,
        "bytes": nbytes,
        "read_gb_per_s": nbytes / read_s / 1e9,
        "open_unverified_s": open_s,
        "open_verified_s": verify_s,
        "verify_gb_per_s": nbytes / verify_s / 1e9,
        "verify_over_read": verify_s / read_s,
        "open_again_same_process_s": cached_s,
    }


def bench_checkpoint(root: Path, dim: int, layers: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(dim, dim) for _ in range(layers)])
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, dim)).sum().backward()
    optimizer.step()
    saves, hashes, sha256s, verifies, loads = [], [], [], [], []
    for k in range(repeats):
        path = root / f"step-{k}"
        started = time.perf_counter()
        dcp.save(path, model, optimizer, {"step": 1}, {"step": 1})
        saves.append(time.perf_counter() - started)
        names = checksums.checkpoint_files(path)
        hashes.append(best_s(lambda p=path, n=names: checksums.hash_files(p, n), 1))
        sha256s.append(best_s(lambda p=path, n=names: [file_sha256(p / x) for x in n], 1))
        checksums._verified.clear()
        verifies.append(best_s(lambda p=path: checksums.verify(p), 1))
        started = time.perf_counter()
        dcp.load(path, model, optimizer, {"step": 0})  # verified above: the cache skips it here
        loads.append(time.perf_counter() - started)
        if k:
            shutil.rmtree(root / f"step-{k - 1}")
    nbytes = sum((path / n).stat().st_size for n in checksums.checkpoint_files(path))
    save_s, hash_s, verify_s, load_s = min(saves), min(hashes), min(verifies), min(loads)
    sha256_s = min(sha256s)
    return {
        "algorithm": checksums.ALGORITHM,
        "parameters": sum(p.numel() for p in model.parameters()),
        "bytes": nbytes,
        "save_s_with_manifest": save_s,
        "hash_s": hash_s,
        "manifest_share_of_save": hash_s / save_s,
        "load_s_without_verify": load_s,
        "verify_s": verify_s,
        "verify_over_load": verify_s / load_s,
        "verify_gb_per_s": nbytes / verify_s / 1e9,
        "sha256_s_same_files": sha256_s,
        "sha256_over_load": sha256_s / load_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    parser.add_argument("--tokens", type=int, default=200_000_000, help="shard tokens in all (uint16)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        root = Path(tmp)
        results = {
            "machine": {
                "cpu": platform.processor() or platform.machine(),
                "cores_visible": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
            },
            "shards": [
                bench_shards(root / "one", args.tokens, 1, args.repeats),
                bench_shards(root / "eight", args.tokens, 8, args.repeats),
            ],
            "checkpoint": bench_checkpoint(root / "ckpt", dim=1024, layers=24, repeats=args.repeats),
        }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
