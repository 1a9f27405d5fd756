"""Byte / patch tokenisation throughput vs a plain Python loop baseline. Writes results.json beside itself."""

import json
import time
from pathlib import Path

import numpy as np

from lmrepro.data import patch_tokenizer as pt
from lmrepro.data import spikes


def base_bytes(a):
    out = []
    for t in range(a.shape[1]):
        out.append(255)
        out.extend(min(int(x), 254) for x in a[:, t])
    return out


def base_patch(a, p1, table, unk, sep):
    n, t = a.shape
    out = []
    for tp in range(0, t, p1):
        out.append(sep)
        for i in range(n):
            p = bytes(a[i, tp : tp + p1]).ljust(p1, b"\0")
            out.append(table.get(p, unk))
    return out


def timed(fn, rows):
    t0, n = time.perf_counter(), 0
    for r in rows:
        n += len(fn(r))
    return len(rows) / (time.perf_counter() - t0), n / (time.perf_counter() - t0)


def main():
    rng = np.random.default_rng(0)
    rows = [rng.poisson(0.4, (64, 600)).astype(np.uint8) for _ in range(100)]
    tok = pt.build(rows, p0=1, p1=15, vocab_size=32000)
    table = {bytes(p): i for i, p in enumerate(tok.patches)}
    res = {
        "rows": len(rows),
        "shape": [64, 600],
        "byte": timed(lambda a: spikes.encode_bytes(a)[0], rows),
        "byte_baseline": timed(base_bytes, rows[:20]),
        "patch": timed(lambda a: tok.encode(a)[0], rows),
        "patch_baseline": timed(lambda a: base_patch(a, 15, table, tok.unk_id, tok.sep_id), rows[:20]),
    }
    res = {
        k: ({"rows_per_s": v[0], "tokens_per_s": v[1]} if isinstance(v, tuple) else v) for k, v in res.items()
    }
    res["byte_speedup"] = res["byte"]["tokens_per_s"] / res["byte_baseline"]["tokens_per_s"]
    res["patch_speedup"] = res["patch"]["tokens_per_s"] / res["patch_baseline"]["tokens_per_s"]
    (Path(__file__).parent / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
