"""n-gram fit time per million tokens: the vectorised counts of lmrepro.eval.ngram against a plain Python
loop over dicts (the seed's way), on the same byte-mode spike tokens, measured in the same run.
Writes results.json beside itself."""

import json
import platform
import time
from pathlib import Path

import numpy as np

from lmrepro.data import synthetic_spikes
from lmrepro.data.spikes import encode_bytes, fix_neurons
from lmrepro.eval.ngram import fit_ngram, fit_ngram_loop


def stand_in_tokens(num_tokens: int) -> np.ndarray:
    """Byte tokens of the Neural Pile stand-in (16 neurons per row), repeated rows up to num_tokens."""
    cols = synthetic_spikes.make_rows(256, seed=0, split="train")
    parts = [encode_bytes(fix_neurons(np.asarray(c, np.uint8), 16, seed=0, sample_id=i))[0]
             for i, c in enumerate(cols["spike_counts"])]  # fmt: skip
    one = np.concatenate(parts)
    return np.resize(one, num_tokens)


def seconds(fn, *args) -> float:
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    results = {"host": platform.node(), "processor": platform.processor(), "date": time.strftime("%Y-%m-%d")}
    loop_tokens, fast_tokens = 200_000, 4_000_000
    for n in (1, 2, 3, 5):
        fast = seconds(fit_ngram, stand_in_tokens(fast_tokens), n, 256) / fast_tokens * 1e6
        loop = seconds(fit_ngram_loop, stand_in_tokens(loop_tokens), n, 256) / loop_tokens * 1e6
        results[f"n={n}"] = {
            "vectorised_s_per_million_tokens": round(fast, 4),
            "loop_s_per_million_tokens": round(loop, 3),
            "speedup": round(loop / fast, 1),
        }
        print(n, results[f"n={n}"], flush=True)
    results["tokens"] = {"vectorised": fast_tokens, "loop": loop_tokens, "vocab_size": 256}
    (Path(__file__).parent / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
