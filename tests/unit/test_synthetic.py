"""Tests for the synthetic corpus: determinism, schemas, MC balance and that the MC answer needs the facts."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import re
from pathlib import Path

import pytest

from lmrepro.data.synthetic import CATEGORIES, build_world, generate_corpus, oracle_answer

DEFAULT_SCALE = {"num_train_documents": 20000, "num_heldout_documents": 500, "num_mc_examples": 200}
SMALL_SCALE = {"num_train_documents": 300, "num_heldout_documents": 50, "num_mc_examples": 40}
FILES = ("train.jsonl", "heldout.jsonl", "mc.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, generate_corpus(out, seed=1234, **DEFAULT_SCALE)


@pytest.fixture(scope="module")
def train_texts(corpus: tuple[Path, dict]) -> list[str]:
    return [doc["text"] for doc in read_jsonl(corpus[0] / "train.jsonl")]


@pytest.fixture(scope="module")
def mc(corpus: tuple[Path, dict]) -> list[dict]:
    return read_jsonl(corpus[0] / "mc.jsonl")


def test_same_seed_gives_byte_identical_files(tmp_path: Path) -> None:
    first = generate_corpus(tmp_path / "a", seed=7, **SMALL_SCALE)
    second = generate_corpus(tmp_path / "b", seed=7, **SMALL_SCALE)
    assert first == second
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_other_seed_gives_other_world_and_files(tmp_path: Path) -> None:
    generate_corpus(tmp_path / "a", seed=7, **SMALL_SCALE)
    generate_corpus(tmp_path / "b", seed=8, **SMALL_SCALE)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "b" / name).read_bytes()
    assert build_world(7).animals != build_world(8).animals


def test_manifest_describes_the_written_files(corpus: tuple[Path, dict]) -> None:
    out, manifest = corpus
    assert manifest["generator"] == "lmrepro.data.synthetic"
    assert manifest["version"] == 1
    assert manifest["seed"] == 1234
    assert set(manifest["files"]) == set(FILES)
    expected_counts = dict(zip(FILES, DEFAULT_SCALE.values(), strict=True))
    for name, entry in manifest["files"].items():
        data = (out / name).read_bytes()
        assert entry["num_bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["num_documents"] == expected_counts[name] == len(data.splitlines())
    assert manifest["world"]["num_animals"] == len(build_world(1234).animals)
    json.dumps(manifest)  # the caller writes it as manifest.json


@pytest.mark.parametrize(("name", "prefix"), [("train.jsonl", "train"), ("heldout.jsonl", "heldout")])
def test_document_schema(corpus: tuple[Path, dict], name: str, prefix: str) -> None:
    docs = read_jsonl(corpus[0] / name)
    for index, doc in enumerate(docs):
        assert list(doc) == ["id", "text"]
        assert doc["id"] == f"{prefix}-{index:06d}"
        # Lowercase ASCII words, single spaces, sentences ending with a full stop.
        assert re.fullmatch(r"[a-z]+(,? [a-z]+)*\.( [a-z]+(,? [a-z]+)*\.)*", doc["text"]), doc["text"]


def test_train_text_size_at_default_scale(train_texts: list[str]) -> None:
    assert 1_000_000 <= sum(len(text) for text in train_texts) <= 3_000_000


def test_mc_schema(mc: list[dict]) -> None:
    for index, example in enumerate(mc):
        assert set(example) == {"ind", "activity_label", "ctx", "endings", "label", "split"}
        assert example["ind"] == index
        assert example["activity_label"] == "synthetic"
        assert example["split"] == "test"
        assert isinstance(example["label"], int) and 0 <= example["label"] < 4
        assert len(example["endings"]) == 4 and len(set(example["endings"])) == 4
        for ending in example["endings"]:
            assert re.fullmatch(r" [a-z]+\.", ending)
        assert re.fullmatch(r"[a-z ,.]+[a-z]", example["ctx"])


def test_labels_are_balanced(mc: list[dict]) -> None:
    counts = collections.Counter(example["label"] for example in mc)
    assert sorted(counts) == [0, 1, 2, 3]
    assert max(counts.values()) - min(counts.values()) <= 1


def test_oracle_answers_every_item(mc: list[dict]) -> None:
    assert all(oracle_answer(example, seed=1234) == example["label"] for example in mc)


def test_oracle_depends_on_the_world(mc: list[dict]) -> None:
    # Another seed's facts must not answer this seed's items (world is reused only within a seed).
    hits = 0
    for example in mc:
        with contextlib.suppress(ValueError):  # animal or value absent from the other world
            hits += oracle_answer(example, seed=99) == example["label"]
    assert hits / len(mc) < 0.6


def test_ending_frequency_baseline_is_near_chance(mc: list[dict], train_texts: list[str]) -> None:
    word_counts = collections.Counter(re.findall(r"[a-z]+", " ".join(train_texts)))

    def most_frequent(example: dict) -> int:
        frequencies = [word_counts[ending.strip(" .")] for ending in example["endings"]]
        return frequencies.index(max(frequencies))

    accuracy = sum(most_frequent(example) == example["label"] for example in mc) / len(mc)
    assert accuracy < 0.45


@pytest.mark.parametrize("pick", [min, max], ids=["shortest", "longest"])
def test_ending_length_baseline_is_near_chance(mc: list[dict], pick) -> None:
    def by_length(example: dict) -> int:
        lengths = [len(ending) for ending in example["endings"]]
        return lengths.index(pick(lengths))

    accuracy = sum(by_length(example) == example["label"] for example in mc) / len(mc)
    assert accuracy < 0.45


def test_each_ending_is_correct_about_a_quarter_of_its_appearances(mc: list[dict]) -> None:
    appearances: collections.Counter[str] = collections.Counter()
    correct: collections.Counter[str] = collections.Counter()
    for example in mc:
        appearances.update(example["endings"])
        correct[example["endings"][example["label"]]] += 1
    for ending, count in appearances.items():
        assert 0.05 <= correct[ending] / count <= 0.5, ending


def test_answer_cannot_be_copied_from_context(mc: list[dict]) -> None:
    for example in mc:
        ctx_words = set(re.findall(r"[a-z]+", example["ctx"]))
        assert not ctx_words & {ending.strip(" .") for ending in example["endings"]}, example


def test_train_states_each_fact_consistently(train_texts: list[str]) -> None:
    world = build_world(1234)
    habitats = collections.defaultdict(set)
    for name, habitat in re.findall(r"([a-z]+) lives? in the ([a-z]+)\.", " ".join(train_texts)):
        habitats[name].add(habitat)
    assert habitats, "no habitat facts found"
    for animal in world.animals:
        assert habitats[animal.singular] == habitats[animal.plural] == {animal.habitat}
    for category in CATEGORIES:
        # Balanced world: no value is held by many more animals than another.
        holders = collections.Counter(getattr(a, category) for a in world.animals)
        assert max(holders.values()) - min(holders.values()) <= 1


def test_splits_share_no_documents(corpus: tuple[Path, dict], train_texts: list[str], mc: list[dict]) -> None:
    train = set(train_texts)
    heldout = {doc["text"] for doc in read_jsonl(corpus[0] / "heldout.jsonl")}
    assert not train & heldout
    for example in mc:
        assert example["ctx"] not in train
        assert example["ctx"] + example["endings"][example["label"]] not in train | heldout


@pytest.mark.parametrize("argument", list(DEFAULT_SCALE))
@pytest.mark.parametrize("bad_value", [0, -3])
def test_non_positive_counts_are_rejected(tmp_path: Path, argument: str, bad_value: int) -> None:
    with pytest.raises(ValueError, match=argument):
        generate_corpus(tmp_path, seed=0, **{**SMALL_SCALE, argument: bad_value})
    assert not (tmp_path / "train.jsonl").exists()


def test_oracle_rejects_items_it_cannot_answer() -> None:
    example = {"ctx": "the unicorn lives in the", "endings": [" a.", " b.", " c.", " d."], "label": 0}
    with pytest.raises(ValueError, match="no animal"):
        oracle_answer(example, seed=0)


def test_non_integer_seed_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed"):
        generate_corpus(tmp_path, seed="0", **SMALL_SCALE)  # type: ignore[arg-type]
