"""Loader throughput and memory: tokens/s one process reads from token shards, and its RSS growth.

    python benchmarks/loader/bench_loader.py --out benchmarks/loader/results.json

Shards of random uint16 tokens (the vocabulary of a 50k BPE) are written to a temporary folder, then read
by lmrepro's WindowLoader: one source and a three-source mixture, at seq_len 2048 and 8192, without and
with the prefetch thread. The baseline, measured in the same run on the same shards, is the previous
reader: one `TokenStream.window` per sample, then `np.stack`. Reads hit the page cache (the shards were
just written), so the figures are the loader's CPU cost, not the disk's. Streaming mode (tokenizing JSONL
on the fly with a byte-level BPE) is measured too: its ceiling is the tokenizer's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmrepro.data.loader import WindowLoader
from lmrepro.data.shards import TokenStream, read_shard, write_index, write_shard

VOCAB = 50_257


def rss_mib() -> dict[str, float]:
    """Resident memory of this process: anonymous (heap) and file-backed (memory-mapped shards)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def write_source(folder: Path, num_tokens: int, seed: int, shard_tokens: int = 50_000_000) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i, start in enumerate(range(0, num_tokens, shard_tokens)):
        tokens = rng.integers(0, VOCAB, size=min(shard_tokens, num_tokens - start), dtype=np.uint16)
        name = f"shard-{i:05d}.bin"
        digest = write_shard(folder / name, tokens, vocab_size=VOCAB, num_documents=1)
        entries.append({"file": name, "num_tokens": int(tokens.size), "num_documents": 1, "sha256": digest})
    return write_index(
        folder, entries, vocab_size=VOCAB, bos_id=None, eos_id=0, tokenizer_sha256="0" * 64, source={}
    )


class BaselineLoader:
    """The reader before the mixture work (data/loader.py of commit f1154a3), one source: a window id per
    sample, a fresh array per window, np.stack, and views of the stacked windows as outputs."""

    def __init__(self, stream: TokenStream, *, seq_len: int, global_batch_sequences: int, seed: int = 0):
        self.stream, self.seq_len, self.batch, self.seed = stream, seq_len, global_batch_sequences, seed
        self.num_windows = (len(stream) - 1) // seq_len
        self.samples_consumed, self._epoch, self._order = 0, -1, None
        folder = stream.index_path.parent
        self._memmaps = [read_shard(folder / entry["file"]) for entry in stream.index["shards"]]

    def _window_id(self, sample: int) -> int:
        epoch, position = divmod(sample, self.num_windows)
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
            self._epoch = epoch
        return int(self._order[position])

    def _window(self, start: int, length: int) -> np.ndarray:
        """TokenStream.window of commit f1154a3: searchsorted and np.memmap slices."""
        stream = self.stream
        out = np.empty(length, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(stream._starts, start, side="right")) - 1
        offset = start - int(stream._starts[shard])
        while filled < length:
            piece = self._memmaps[shard][offset : offset + length - filled]
            out[filled : filled + len(piece)] = piece
            filled += len(piece)
            shard, offset = shard + 1, 0
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        first = self.samples_consumed
        ids = [self._window_id(s) for s in range(first, first + self.batch)]
        rows = [self._window(w * self.seq_len, self.seq_len + 1) for w in ids]
        windows = torch.from_numpy(np.stack(rows))
        self.samples_consumed += self.batch
        return windows[:, :-1], windows[:, 1:]


def measure(loader, seconds: float, step_s: float = 0.0) -> dict:
    """Tokens/s over `seconds`; with step_s, a simulated training step between batches (data wait)."""
    loader.next_batch()  # warm: the epoch permutation is built once per epoch
    rss_before = rss_mib()
    tokens, waits, started = 0, [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        t = time.perf_counter()
        inputs, _ = loader.next_batch()
        waits.append(time.perf_counter() - t)
        tokens += inputs.numel()
        if step_s:
            time.sleep(step_s)
    elapsed = time.perf_counter() - started
    rss_after = rss_mib()
    if hasattr(loader, "close"):
        loader.close()
    return {
        "tokens_per_s": tokens / elapsed if not step_s else None,
        "tokens_per_s_of_reading": tokens / sum(waits),
        "batches": len(waits),
        "data_wait_ms_median": 1e3 * float(np.median(waits)),
        "rss_growth_mib": {k: round(rss_after[k] - rss_before[k], 1) for k in rss_after},
    }


def streaming_loader(tmp: Path):
    """Streaming mode over JSONL documents of English-like words, with a byte-level BPE of 8k tokens."""
    from lmrepro.data.streaming import StreamingLoader, StreamSource
    from lmrepro.data.tokenizer import train_bpe

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("etaoinshrdlucmfwyp"), size=rng.integers(2, 9))) for _ in range(5000)]
    files = []
    for f in range(4):
        path = tmp / f"docs-{f}.jsonl"
        with path.open("w") as out:
            for _ in range(5000):
                out.write(
                    json.dumps({"text": " ".join(rng.choice(words, size=rng.integers(50, 800)))}) + "\n"
                )
        files.append(str(path))
    train_bpe(files[:1], 8192, tmp / "bpe")
    source = StreamSource("docs", 1.0, files)
    kw = dict(seq_len=2048, global_batch_sequences=8, prefetch_batches=0, shuffle_buffer_documents=1000)
    return StreamingLoader([source], str(tmp / "bpe"), **kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/loader/results.json")
    parser.add_argument("--tokens", type=int, default=300_000_000, help="tokens in the largest source")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results: dict = {
        "machine": {
            "cpu": cpu_model(),
            "cores_visible": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
        },
        "setup": {"tokens_largest_source": args.tokens, "seconds_per_measurement": args.seconds},
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        sizes = [args.tokens, args.tokens // 4, args.tokens // 16]
        started = time.perf_counter()
        indexes = [write_source(Path(tmp) / f"s{k}", n, seed=k) for k, n in enumerate(sizes)]
        print(f"wrote {sum(sizes) / 1e6:.0f}M tokens in {time.perf_counter() - started:.1f} s")
        rss_start = rss_mib()
        streams = [TokenStream(i.parent) for i in indexes]
        for seq_len, local_batch in [(2048, 8), (8192, 2)]:
            for label, kw in [
                ("one source", {"streams": streams[:1]}),
                ("mixture 0.6/0.3/0.1", {"streams": streams, "weights": [0.6, 0.3, 0.1], "names": "abc"}),
            ]:
                common = dict(seq_len=seq_len, global_batch_sequences=local_batch, seed=0, **kw)
                runs = {"WindowLoader, no prefetch": WindowLoader(**common, prefetch_batches=0)}
                if len(kw["streams"]) == 1:
                    runs["baseline (window + np.stack)"] = BaselineLoader(
                        kw["streams"][0], seq_len=seq_len, global_batch_sequences=local_batch
                    )
                for name, loader in runs.items():
                    row = {"seq_len": seq_len, "local_batch": local_batch, "data": label, "loader": name}
                    row.update(measure(loader, args.seconds))
                    results["runs"].append(row)
                    print(json.dumps(row))
                # With a (simulated) 20 ms training step, how long does next_batch block?
                loader = WindowLoader(**common, prefetch_batches=2)
                row = {"seq_len": seq_len, "local_batch": local_batch, "data": label}
                row |= {"loader": "WindowLoader, prefetch 2, 20 ms step"} | measure(
                    loader, args.seconds, 0.02
                )
                results["runs"].append(row)
                print(json.dumps(row))
        results["rss_total_growth_mib"] = {k: round(v - rss_start[k], 1) for k, v in rss_mib().items()}
        row = {"seq_len": 2048, "local_batch": 8, "data": "JSONL, BPE 8k", "loader": "StreamingLoader"}
        row |= measure(streaming_loader(Path(tmp)), args.seconds)
        results["runs"].append(row)
        print(json.dumps(row))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
