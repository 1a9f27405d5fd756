"""Deterministic stand-in of the Neural Pile in its real schema (seed-systems.md §1: `spike_counts` 2-D uint8
neurons x time bins, `source_dataset`, subject/session/segment ids; train/test splits),
written with `datasets`.

Structure: per-row shared latent rhythms (sinusoids) drive Poisson rates per neuron; a one-bin refractory
rule halves the count after a bin with >= 2 spikes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABS = ("willett", "xiao", "churchland", "perich")


def make_rows(n_rows: int, *, seed: int, split: str, bad_rows: int = 0) -> dict[str, list]:
    rng = np.random.Generator(np.random.PCG64([seed, 0 if split == "train" else 1]))
    cols: dict[str, list] = {
        k: [] for k in ("spike_counts", "source_dataset", "subject_id", "session_id", "segment_id")
    }
    for i in range(n_rows):
        lab = LABS[i % len(LABS)]
        n, t = int(rng.integers(4, 24)), int(rng.integers(30, 120))
        k = 3
        phase = rng.uniform(0, 2 * np.pi, k)
        freq = rng.uniform(0.05, 0.3, k)
        lat = np.sin(freq[:, None] * np.arange(t)[None, :] + phase[:, None])  # (k, t)
        w = rng.normal(0, 1, (n, k))
        rate = np.exp(w @ lat - 1.0)
        c = rng.poisson(rate).astype(np.int64)
        c[:, 1:] = np.where(c[:, :-1] >= 2, c[:, 1:] // 2, c[:, 1:])
        cols["spike_counts"].append(np.minimum(c, 255).astype(np.uint8).tolist())
        cols["source_dataset"].append(lab)
        cols["subject_id"].append(f"{lab}_s{i % 3}")
        cols["session_id"].append(f"{lab}_sess{i % 5}")
        cols["segment_id"].append(f"{split}_{i}")
    for j in range(bad_rows):  # non-2-D rows: an empty list reads back 1-D
        cols["spike_counts"].append([])
        cols["source_dataset"].append(LABS[j % len(LABS)])
        cols["subject_id"].append("bad")
        cols["session_id"].append("bad")
        cols["segment_id"].append(f"{split}_bad{j}")
    return cols


def write(
    out_dir: str | Path, *, seed: int = 0, n_train: int = 64, n_test: int = 16, bad_rows: int = 0
) -> dict:
    import datasets

    features = datasets.Features(
        {
            "spike_counts": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
            "source_dataset": datasets.Value("string"),
            "subject_id": datasets.Value("string"),
            "session_id": datasets.Value("string"),
            "segment_id": datasets.Value("string"),
        }
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, n in (("train", n_train), ("test", n_test)):
        ds = datasets.Dataset.from_dict(
            make_rows(n, seed=seed, split=split, bad_rows=bad_rows), features=features
        )
        paths[split] = str(out / f"{split}.parquet")
        ds.to_parquet(paths[split])
    return paths
