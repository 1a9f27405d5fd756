"""Unit tests for lmrepro.data.mixture and the mixture path of WindowLoader and DataConfig."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import yaml

from lmrepro.config import DataConfig, JobConfig, SourceConfig, check_weights, from_dict, validate
from lmrepro.data.loader import WindowLoader, build_loader
from lmrepro.data.mixture import MAX_SAMPLES, MixtureSchedule
from lmrepro.data.shards import TokenStream, write_index, write_shard
from lmrepro.workflow import check_config, run_data_mode, run_fixed_values

REPO = Path(__file__).resolve().parents[2]

SOURCE_BASE = 10_000_000  # token = source index × SOURCE_BASE + position: a window names its source


def write_source(folder: Path, source: int, num_tokens: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tokens = source * SOURCE_BASE + np.arange(num_tokens, dtype=np.uint32)
    vocab = 4 * SOURCE_BASE
    digest = write_shard(folder / "shard-00000.bin", tokens, vocab_size=vocab, num_documents=1)
    entry = {"file": "shard-00000.bin", "num_tokens": num_tokens, "num_documents": 1, "sha256": digest}
    return write_index(
        folder, [entry], vocab_size=vocab, bos_id=None, eos_id=0, tokenizer_sha256="0" * 64, source={}
    )


@pytest.fixture(scope="module")
def streams(tmp_path_factory: pytest.TempPathFactory) -> list[TokenStream]:
    root = tmp_path_factory.mktemp("mixture")
    sizes = [400_000, 60_000, 9_000]  # the small sources repeat many epochs over 1M tokens
    return [TokenStream(write_source(root / f"s{k}", k, n).parent) for k, n in enumerate(sizes)]


# ----------------------------------------------------------------------------------------- weights


def test_weights_are_normalised_token_fractions() -> None:
    assert check_weights({"web": 3, "code": 1}, "runs.mix.mixture") == {"web": 0.75, "code": 0.25}
    assert check_weights({"web": 1.0, "unused": 0.0}, "w") == {"web": 1.0, "unused": 0.0}


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"web": 0.5, "code": -0.1}, r"runs\.mix\.mixture\.code: weight -0\.1 must be a finite number >= 0"),
        ({"web": 0.0, "code": 0}, r"runs\.mix\.mixture: the weights of \['code', 'web'\] sum to 0\.0"),
        ({"web": math.nan}, r"runs\.mix\.mixture\.web: weight nan must be"),
        ({"web": "half"}, r"runs\.mix\.mixture\.web: weight 'half' is not a number"),
        ({}, r"runs\.mix\.mixture: a mixture needs at least one dataset"),
    ],
)
def test_bad_weights_are_named(weights: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_weights(weights, "runs.mix.mixture")


def test_bad_weights_in_the_loader(streams: list[TokenStream]) -> None:
    with pytest.raises(ValueError, match=r"data\.sources\.b: weight -1\.0 must be"):
        WindowLoader(streams[:2], weights=[1.0, -1.0], names=["a", "b"], seq_len=16, global_batch_sequences=4)
    with pytest.raises(ValueError, match=r"data\.sources: the weights of \['a', 'b'\] sum to 0\.0"):
        WindowLoader(streams[:2], weights=[0, 0], names=["a", "b"], seq_len=16, global_batch_sequences=4)


# ---------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("fractions", [[0.5, 0.5], [0.7, 0.2, 0.1], [0.6, 0.25, 0.1, 0.04, 0.01], [1.0]])
def test_counts_track_the_weights_within_the_tree_depth(fractions: list[float]) -> None:
    schedule = MixtureSchedule(fractions, seed=11)
    depth = math.ceil(math.log2(len(fractions))) + 1
    sources, local = schedule.assign(0, 20_000)
    running = np.zeros(len(fractions), dtype=np.int64)
    for n, (k, j) in enumerate(zip(sources.tolist(), local.tolist(), strict=True)):
        assert j == running[k]  # the index within a source counts its earlier samples
        running[k] += 1
        if n % 997 == 0:
            assert schedule.counts(n + 1) == running.tolist()
            assert np.abs(running - (n + 1) * np.array(fractions)).max() <= depth


def test_any_slice_is_the_slice_of_the_whole() -> None:
    schedule = MixtureSchedule([0.5, 0.3, 0.2], seed=5)
    whole_sources, whole_local = schedule.assign(0, 5_000)
    for first, count in [(0, 1), (17, 64), (1_023, 1), (4_000, 1_000)]:
        sources, local = schedule.assign(first, count)
        assert sources.tolist() == whole_sources[first : first + count].tolist()
        assert local.tolist() == whole_local[first : first + count].tolist()


def test_counts_are_closed_form_far_out() -> None:
    schedule = MixtureSchedule([0.6, 0.3, 0.1], seed=0)
    n = 10**11  # about 2·10^14 tokens at seq_len 2048: computed, not replayed
    counts = schedule.counts(n)
    assert sum(counts) == n
    # Exact up to the tree depth against the weights as quantised to 2**-24 (relative error < 6e-8).
    assert all(abs(c - n * f) <= 3 for c, f in zip(counts, schedule.quantised, strict=True))
    assert all(abs(c / n - f) < 1e-7 for c, f in zip(counts, [0.6, 0.3, 0.1], strict=True))
    sources, local = schedule.assign(n, 4)
    for k, j in zip(sources.tolist(), local.tolist(), strict=True):
        assert j >= counts[k]
    with pytest.raises(ValueError, match="outside the schedule"):
        schedule.assign(MAX_SAMPLES, 1)


def test_seed_changes_the_interleaving_not_the_shares() -> None:
    schedules = [MixtureSchedule([0.5, 0.3, 0.2], seed=seed) for seed in range(8)]
    patterns = {tuple(s.assign(0, 64)[0].tolist()) for s in schedules}
    assert len(patterns) > 1
    for s in schedules:
        assert np.abs(np.array(s.counts(1001)) - 1001 * np.array([0.5, 0.3, 0.2])).max() <= 3


def test_zero_weight_source_is_never_read() -> None:
    schedule = MixtureSchedule([0.0, 0.8, 0.2], seed=2)
    assert 0 not in schedule.assign(0, 10_000)[0].tolist()


# ------------------------------------------------------------------------------- loader on 1M tokens


@pytest.mark.parametrize("weights", [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.97, 0.02, 0.01]])
def test_realised_token_shares_over_1m_tokens(streams: list[TokenStream], weights: list[float]) -> None:
    seq_len, batch = 128, 64
    ld = WindowLoader(streams, weights=weights, names=["a", "b", "c"], seq_len=seq_len,
                      global_batch_sequences=batch, seed=3)  # fmt: skip
    tokens = np.zeros(3)
    while tokens.sum() < 1_000_000:
        _, targets = ld.next_batch()
        sources = (targets // SOURCE_BASE).numpy()
        assert (sources == sources[:, :1]).all()  # a window never mixes sources
        tokens += np.bincount(sources.ravel(), minlength=3)
    shares = tokens / tokens.sum()
    assert np.abs(shares - weights).max() < 0.01
    logged = ld.metrics()
    assert logged == pytest.approx({f"mixture/{n}": s for n, s in zip("abc", shares, strict=True)})


def test_each_source_visits_its_windows_once_per_epoch(streams: list[TokenStream]) -> None:
    seq_len = 100
    ld = WindowLoader(streams, weights=[0.5, 0.3, 0.2], names=["a", "b", "c"], seq_len=seq_len,
                      global_batch_sequences=10, seed=1)  # fmt: skip
    small = streams[2]
    per_epoch = (len(small) - 1) // seq_len  # 89 windows
    seen = []
    for b in range(100):
        seen += [w for w in ld.sample_ids(b) if ld.split_id(w)[0] == "c"]
    epochs = [seen[i : i + per_epoch] for i in range(0, 2 * per_epoch, per_epoch)]
    for epoch in epochs:
        assert sorted(ld.split_id(w)[1] for w in epoch) == list(range(per_epoch))
    assert epochs[0] != epochs[1]


def test_single_source_order_is_unchanged(streams: list[TokenStream]) -> None:
    """A one-source loader reads the order the loader always had: permutation seeded by (seed, epoch)."""
    ld = WindowLoader(streams[2], seq_len=100, global_batch_sequences=89, seed=4)
    assert ld.sample_ids(0) == np.random.default_rng([4, 0]).permutation(89).tolist()
    assert ld.sample_ids(1) == np.random.default_rng([4, 1]).permutation(89).tolist()
    assert ld.metrics() == {}


def test_mixture_resume_on_another_dp_size(streams: list[TokenStream]) -> None:
    kw = dict(weights=[0.5, 0.3, 0.2], names=["a", "b", "c"], seq_len=64, global_batch_sequences=8, seed=9)
    one = WindowLoader(streams, **kw)
    reference = [one.next_batch()[0] for _ in range(30)]
    four = [WindowLoader(streams, dp_rank=r, dp_size=4, **kw) for r in range(4)]
    for _ in range(12):
        for ld in four:
            ld.next_batch()
    two = [WindowLoader(streams, dp_rank=r, dp_size=2, **kw) for r in range(2)]
    for ld in two:
        ld.load_state_dict(four[0].state_dict())
    for step in range(12, 30):
        assert torch.equal(torch.cat([ld.next_batch()[0] for ld in two]), reference[step])


# ------------------------------------------------------------------------------------ configuration


def test_data_sources_from_toml_are_strict() -> None:
    data = {
        "sources": [{"name": "web", "weight": 3, "index": "w/index.json"}, {"name": "code", "index": "c"}]
    }
    cfg = from_dict(DataConfig, data, "data.")
    assert cfg.sources == [SourceConfig("web", 3.0, "w/index.json"), SourceConfig("code", 1.0, "c")]
    with pytest.raises(ValueError, match=r"unknown config key data\.sources\[1\]\.wieght"):
        from_dict(DataConfig, {"sources": [{"name": "a"}, {"name": "b", "wieght": 1}]}, "data.")
    with pytest.raises(ValueError, match=r"data\.sources\[0\]\.files\[1\] = 3 has the wrong type"):
        from_dict(DataConfig, {"sources": [{"name": "a", "files": ["x.jsonl", 3]}]}, "data.")
    with pytest.raises(ValueError, match=r"data\.sources must be an array"):
        from_dict(DataConfig, {"sources": {"name": "a"}}, "data.")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sources": [{"name": "a", "index": "i", "weight": -2}]}, r"data\.sources\.a: weight -2\.0 must be"),
        ({"sources": [{"name": "a", "index": "i", "weight": 0}]}, r"sum to 0\.0"),
        ({"sources": [{"name": "a", "index": "i"}, {"name": "a", "index": "j"}]}, "distinct"),
        ({"sources": [{"name": "a", "files": ["x.jsonl"]}]}, r"data\.sources\[0\] \(a\): .* needs index"),
        ({"mode": "streaming"}, "data.sources is empty"),
        ({"prefetch_batches": -1}, r"data\.prefetch_batches must be >= 0"),
    ],
)
def test_bad_data_sections_are_named(data: dict, message: str) -> None:
    job = from_dict(JobConfig, {"data": data})
    with pytest.raises(ValueError, match=message):
        validate(job)


def test_build_loader_from_config(streams: list[TokenStream]) -> None:
    weights = [2, 1, 1]
    sources = [SourceConfig(f"s{k}", weights[k], str(s.index_path)) for k, s in enumerate(streams)]
    cfg = DataConfig(seq_len=32, seed=1, sources=sources, prefetch_batches=0)
    ld = build_loader(cfg, global_batch_sequences=8, dp_rank=0, dp_size=1, vocab_size=4 * SOURCE_BASE)
    assert ld.names == ["s0", "s1", "s2"] and ld.schedule.fractions == [0.5, 0.25, 0.25]
    single = DataConfig(seq_len=32, sources=[SourceConfig("web", 1.0, str(streams[0].index_path))])
    ld = build_loader(single, global_batch_sequences=8, dp_rank=0, dp_size=1, vocab_size=4 * SOURCE_BASE)
    assert ld.names == ["web"] and ld.prefetch_batches == 2 and ld.metrics() == {}
    ld.next_batch()
    ld.close()
    with pytest.raises(ValueError, match=r"shards have vocab_size 40000000 but the model has"):
        build_loader(cfg, global_batch_sequences=8, dp_rank=0, dp_size=1, vocab_size=512)


# --------------------------------------------------------------------------- config.yaml (parse time)


@pytest.fixture
def experiment(tmp_path: Path) -> tuple[dict, Path]:
    """The embedded default plus a second synthetic dataset, and a mixture run over both."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    cfg["datasets"]["other"] = {"source": "synthetic", "seed": 5}
    mix = {k: v for k, v in cfg["runs"]["tiny"].items() if k != "dataset"}
    cfg["runs"]["mix"] = {**mix, "mixture": {"synthetic": 3, "other": 1}}
    return cfg, tmp_path


def test_mixture_run_passes_and_renders_sources(experiment: tuple[dict, Path]) -> None:
    cfg, root = experiment
    check_config(cfg, root=root)
    fixed = run_fixed_values("mix", cfg["runs"]["mix"], vocab_size=512, root=root)
    assert fixed["data"] == {
        "sources": [
            {"name": "other", "weight": 1, "index": "results/data/other/synthetic-bpe/train/index.json"},
            {
                "name": "synthetic",
                "weight": 3,
                "index": "results/data/synthetic/synthetic-bpe/train/index.json",
            },
        ]
    }
    single = run_fixed_values("tiny", cfg["runs"]["tiny"], vocab_size=512, root=root)
    assert single["data"] == {
        "sources": [
            {
                "name": "synthetic",
                "weight": 1.0,
                "index": "results/data/synthetic/synthetic-bpe/train/index.json",
            }
        ]
    }


def test_streaming_run_renders_files_and_tokenizer(experiment: tuple[dict, Path]) -> None:
    cfg, root = experiment
    cfg["runs"]["mix"]["overrides"] = {
        "data": {"mode": "streaming", "streaming": {"shuffle_buffer_documents": 64}}
    }
    check_config(cfg, root=root)
    spec = cfg["runs"]["mix"]
    assert run_data_mode(spec, root) == "streaming"
    data = {"other": {"files": ["o.jsonl"], "text_key": "text"}, "synthetic": {"files": ["s.jsonl"]}}
    fixed = run_fixed_values("mix", spec, data=data, root=root)
    assert fixed["data"]["streaming"] == {"tokenizer": "results/tokenizers/synthetic-bpe"}
    assert [s["files"] for s in fixed["data"]["sources"]] == [["o.jsonl"], ["s.jsonl"]]
    single = {k: v for k, v in spec.items() if k != "mixture"} | {"dataset": "other"}
    assert run_fixed_values("one", single, root=root)["data"]["sources"] == [
        {"name": "other", "weight": 1.0, "files": ["results/data/other/raw"]}
    ]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"mixture": {"synthetic": 1, "other": -0.5}}, r"runs\.mix\.mixture\.other: weight -0\.5 must be"),
        ({"mixture": {"synthetic": 0, "other": 0}}, r"runs\.mix\.mixture: the weights of .* sum to 0\.0"),
        (
            {"mixture": {"synthetic": 1, "web": 1}},
            r"runs\.mix\.mixture\.web = 'web' is not a configured dataset",
        ),
        ({"dataset": "synthetic"}, r"runs\.mix: set exactly one of `dataset` .* or `mixture`"),
    ],
)
def test_bad_mixture_stops_at_parse_time(experiment: tuple[dict, Path], edit: dict, message: str) -> None:
    cfg, root = experiment
    cfg["runs"]["mix"].update(edit)
    with pytest.raises(ValueError, match=message):
        check_config(cfg, root=root)


def test_schema_wants_exactly_one_of_dataset_and_mixture(experiment: tuple[dict, Path]) -> None:
    cfg, _ = experiment
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    jsonschema.validate(cfg, schema)
    both = copy.deepcopy(cfg)
    both["runs"]["mix"]["dataset"] = "synthetic"
    neither = copy.deepcopy(cfg)
    del neither["runs"]["mix"]["mixture"]
    negative = copy.deepcopy(cfg)
    negative["runs"]["mix"]["mixture"]["other"] = -1
    for bad, where in [(both, "dataset"), (neither, "mix"), (negative, "other")]:
        with pytest.raises(jsonschema.ValidationError) as e:
            jsonschema.validate(bad, schema)
        assert list(e.value.path)[-1] == where
