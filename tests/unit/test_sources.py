"""Dataset sources: synthetic, local files and folders, and Hugging Face Hub snapshots read offline.

The Hub is never contacted: each test builds a Hugging Face cache the way huggingface_hub stores one
(``datasets--owner--name/{refs/main, snapshots/<commit>/…, blobs/<sha256>}``) and runs with HF_HUB_OFFLINE.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import REPO
from test_tokenize import expected_stream, sentences, write_jsonl

from lmrepro.data.encode import split_files, tokenize_to_shards
from lmrepro.data.shards import TokenStream
from lmrepro.data.sources import local_input_paths, prepare_dataset
from lmrepro.data.tokenizer import train_bpe
from lmrepro.workflow import check_config

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def parquet_bytes(texts: list[str], tmp: Path) -> bytes:
    path = tmp / "tmp.parquet"
    pq.write_table(pa.table({"text": texts, "score": [1.0] * len(texts)}), path, row_group_size=16)
    data = path.read_bytes()
    path.unlink()
    return data


def make_hub_cache(cache: Path, repo: str, files: dict[str, bytes], *, commit: str = COMMIT) -> Path:
    """A Hub cache as huggingface_hub writes it: content-addressed blobs, snapshot links, refs/main."""
    folder = cache / f"datasets--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()  # an LFS file's blob name is its sha256
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def fineweb(hub_cache: Path, tmp_path: Path) -> dict:
    """A FineWeb-Edu-like repo: parquet files under sample/10BT/, plus a README and another subset."""
    texts = sentences(120, seed=11)
    files = {
        "README.md": b"# a dataset card\n",
        "sample/10BT/000_00000.parquet": parquet_bytes(texts[:50], tmp_path),
        "sample/10BT/001_00000.parquet": parquet_bytes(texts[50:100], tmp_path),
        "sample/10BT/002_00000.parquet": parquet_bytes(texts[100:], tmp_path),
        "sample/100BT/000_00000.parquet": parquet_bytes(["not wanted"], tmp_path),
    }
    snapshot = make_hub_cache(hub_cache, "HuggingFaceFW/fineweb-edu", files)
    spec = {
        "source": "hub",
        "repo": "HuggingFaceFW/fineweb-edu",
        "revision": COMMIT,
        "subset": "sample/10BT",
        "splits": {"train": ["*.parquet", "!002_*"], "heldout": "002_00000.parquet"},
    }
    return {"spec": spec, "texts": texts, "snapshot": snapshot}


# ------------------------------------------------------------------------------------------------- hub


def test_hub_snapshot_offline(fineweb: dict, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    manifest = prepare_dataset(fineweb["spec"], raw, name="fineweb")
    assert (raw / "snapshot").is_symlink()
    assert (raw / "snapshot").resolve() == fineweb["snapshot"].resolve()
    assert manifest["source"] == "hub" and manifest["commit"] == COMMIT
    assert manifest["repo"] == "HuggingFaceFW/fineweb-edu" and manifest["revision"] == COMMIT
    assert manifest["splits"] == {
        "train": {
            "files": ["snapshot/sample/10BT/000_00000.parquet", "snapshot/sample/10BT/001_00000.parquet"]
        },
        "heldout": {"files": ["snapshot/sample/10BT/002_00000.parquet"]},
    }
    for name, entry in manifest["files"].items():
        data = (raw / name).read_bytes()
        assert entry == {"num_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads((raw / "manifest.json").read_text()) == manifest

    files, text_field = split_files(raw, "train")
    tok = train_bpe(files, 300, tmp_path / "tok", text_field=text_field)
    tokenize_to_shards(files, tok, tmp_path / "train", text_field=text_field)
    stream = TokenStream(tmp_path / "train")
    assert stream.window(0, len(stream)).tolist() == expected_stream(tok, fineweb["texts"][:100])


def test_hub_branch_revision_records_the_commit(
    fineweb: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = {**fineweb["spec"], "revision": "main"}
    manifest = prepare_dataset(spec, tmp_path / "raw", name="fineweb")
    assert (manifest["revision"], manifest["commit"]) == ("main", COMMIT)
    assert f"revision 'main' is a branch or tag and can move; pin the commit {COMMIT}" in caplog.text


@pytest.mark.parametrize(
    "change",
    [{"revision": "fedcba9876543210fedcba9876543210fedcba98"}, {"revision": "v2"}, {"repo": "nobody/absent"}],
    ids=["unknown-commit", "unknown-branch", "unknown-repo"],
)
def test_hub_offline_missing_revision_is_a_clear_error(fineweb: dict, tmp_path: Path, change: dict) -> None:
    spec = {**fineweb["spec"], **change}
    with pytest.raises(FileNotFoundError) as e:
        prepare_dataset(spec, tmp_path / "raw", name="fineweb")
    msg = str(e.value)
    for fragment in ("datasets.fineweb", spec["repo"], spec["revision"], "HF_HUB_OFFLINE=1", "hf download"):
        assert fragment in msg, msg
    assert "--include 'sample/10BT/*.parquet'" in msg  # the command downloads exactly what is needed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf-cache"]  # no raw/, no partial folder


def test_hub_split_pattern_matching_nothing(fineweb: dict, tmp_path: Path) -> None:
    spec = copy.deepcopy(fineweb["spec"])
    spec["allow_patterns"] = ["*"]
    spec["splits"]["heldout"] = "validation-*.parquet"
    with pytest.raises(ValueError) as e:
        prepare_dataset(spec, tmp_path / "raw", name="fineweb")
    assert "datasets.fineweb.splits.heldout" in str(e.value)
    assert "sample/10BT/000_00000.parquet" in str(e.value)  # what the snapshot does hold


def test_hub_corrupted_cache_file(fineweb: dict, tmp_path: Path) -> None:
    blob = (fineweb["snapshot"] / "sample/10BT/001_00000.parquet").resolve()
    blob.write_bytes(blob.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="cached file snapshot/sample/10BT/001_00000.parquet is corrupted"):
        prepare_dataset(fineweb["spec"], tmp_path / "raw", name="fineweb")


def test_hub_token_is_never_logged(
    fineweb: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_secretvalue123")
    caplog.set_level("DEBUG")
    manifest = prepare_dataset(fineweb["spec"], tmp_path / "raw", name="fineweb")
    assert "HF_TOKEN set" in caplog.text
    assert "hf_secretvalue123" not in caplog.text + json.dumps(manifest)


def test_prepare_script_reports_missing_cache_in_one_line(fineweb: dict, tmp_path: Path) -> None:
    """What a user sees in the rule's log: exit status 2 and a one-line error, no traceback."""
    from huggingface_hub import constants

    spec = {**fineweb["spec"], "revision": "v2"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": constants.HF_HUB_CACHE}
    script = REPO / "workflow" / "scripts" / "prepare_dataset.py"
    cmd = [sys.executable, str(script), "--spec", json.dumps(spec), "--name", "fineweb", "--out", "raw"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: datasets.fineweb: HuggingFaceFW/fineweb-edu (dataset) at revision v2" in result.stderr


# ----------------------------------------------------------------------------------------------- local


def test_local_single_jsonl_is_copied(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "data" / "train.jsonl", ["one", "two"])
    manifest = prepare_dataset({"source": "local", "files": {"train": str(src)}}, tmp_path / "raw")
    assert (tmp_path / "raw" / "train.jsonl").read_bytes() == src.read_bytes()
    entry = manifest["files"]["train.jsonl"]
    assert (
        entry["origin"] == str(src.resolve())
        and entry["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    )
    assert manifest["splits"] == {"train": {"files": ["train.jsonl"]}} and manifest["text_field"] == "text"


def test_local_folders_and_globs_are_read_in_place(tmp_path: Path) -> None:
    data = tmp_path / "corpus"
    (data / "sub").mkdir(parents=True)
    write_jsonl(data / "a.jsonl", ["a1", "a2"], key="body")
    pq.write_table(pa.table({"body": ["b1", "b2"]}), data / "sub" / "b.parquet")
    (data / "notes.csv").write_text("ignored: not a data file\n")
    held = write_jsonl(tmp_path / "held" / "h.jsonl", ["h1"], key="body")
    spec = {
        "source": "local",
        "files": {"train": [str(data), "!*/sub/*"], "heldout": str(tmp_path / "held" / "*.jsonl")},
        "text_field": "body",
    }
    manifest = prepare_dataset(spec, tmp_path / "raw")
    assert manifest["splits"]["train"]["files"] == [str((data / "a.jsonl").resolve())]
    assert manifest["splits"]["heldout"]["files"] == [str(held.resolve())]
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["manifest.json"]  # nothing copied
    files, text_field = split_files(tmp_path / "raw", "train")
    assert (files, text_field) == ([(data / "a.jsonl").resolve()], "body")
    spec["files"]["train"] = str(data)
    manifest = prepare_dataset(spec, tmp_path / "raw")
    assert [Path(f).name for f in manifest["splits"]["train"]["files"]] == ["a.jsonl", "b.parquet"]
    assert sorted(local_input_paths(spec)) == sorted([str(data), str(held)])


@pytest.mark.parametrize(
    ("files", "error", "message"),
    [
        (
            {"train": "nowhere/x.jsonl"},
            FileNotFoundError,
            "datasets.d.files.train: file nowhere/x.jsonl does not",
        ),
        (
            {"train": "corpus/*.parquet"},
            FileNotFoundError,
            "datasets.d.files.train: pattern corpus/*.parquet",
        ),
        ({"train": "empty"}, FileNotFoundError, "datasets.d.files.train: folder empty holds no data file"),
        ({"train": "corpus", "heldout": "corpus/a.jsonl"}, ValueError, "is in split 'train' and in split"),
    ],
)
def test_local_errors_name_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict, error: type, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "corpus" / "a.jsonl", ["a"])
    write_jsonl(tmp_path / "corpus" / "b.jsonl", ["b"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(error, match=message.replace(".", r"\.").replace("*", r"\*")):
        prepare_dataset({"source": "local", "files": files}, tmp_path / "raw", name="d")


def test_synthetic_manifest_lists_its_splits(tmp_path: Path) -> None:
    spec = {"source": "synthetic", "seed": 5, "num_train_documents": 30, "num_heldout_documents": 5}
    manifest = prepare_dataset(spec, tmp_path / "raw", name="synthetic")
    assert manifest["splits"] == {s: {"files": [f"{s}.jsonl"]} for s in ("train", "heldout", "mc")}
    assert split_files(tmp_path / "raw", "heldout") == ([tmp_path / "raw" / "heldout.jsonl"], "text")


# ------------------------------------------------------------------------------ config schema and checks


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def schema_errors(cfg: dict) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(cfg))


HUB = {
    "source": "hub",
    "repo": "HuggingFaceFW/fineweb-edu",
    "revision": COMMIT,
    "subset": "sample/10BT",
    "splits": {"train": ["*.parquet", "!013_00000.parquet"], "heldout": "013_00000.parquet"},
}


def test_schema_accepts_the_seed_datasets(config: dict) -> None:
    config["datasets"].update(
        {
            "fineweb": HUB,
            "wikitext": {
                "source": "hub",
                "repo": "Salesforce/wikitext",
                "revision": "main",
                "subset": "wikitext-103-raw-v1",
                "splits": {"train": "train-*.parquet", "heldout": "validation-*.parquet"},
            },
            "proof-pile": {
                "source": "hub",
                "repo": "EleutherAI/proof-pile-2",
                "revision": "main",
                "allow_patterns": ["arxiv/*"],
                "splits": {"train": "arxiv/train/*.jsonl.zst", "heldout": "arxiv/validation/*.jsonl.zst"},
            },
            "shelf": {
                "source": "local",
                "files": {"train": ["/data/a/*.parquet", "/data/b"]},
                "text_field": "body",
            },
        }
    )
    assert schema_errors(config) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"revision": None}, "datasets.d: 'revision' is a required property"),
        ({"splits": None}, "datasets.d: 'splits' is a required property"),
        ({"files": {"train": "x.jsonl"}}, "datasets.d.files:"),
        ({"seed": 3}, "datasets.d.seed:"),
        ({"repo": "no-owner"}, "datasets.d.repo: 'no-owner' does not match"),
        ({"repo_type": "space"}, "datasets.d.repo_type: 'space' is not one of"),
        ({"splits": {"train": []}}, "datasets.d.splits.train: [] should be non-empty"),
        ({"source": "synthetic", "revision": None, "splits": None, "subset": None, "repo": None}, "x"),
    ],
)
def test_schema_names_the_offending_dataset_key(config: dict, change: dict, expected: str) -> None:
    entry = {**HUB, **change}
    entry = {k: v for k, v in entry.items() if v is not None}
    config["datasets"]["d"] = entry
    errors = schema_errors(config)
    if expected == "x":  # the synthetic source with only synthetic keys is valid
        assert errors == []
        return
    assert any(expected in e for e in errors), errors


def test_schema_rejects_hub_keys_on_other_sources(config: dict) -> None:
    config["datasets"]["d"] = {"source": "local", "files": {"train": "x.jsonl"}, "revision": "main"}
    config["datasets"]["s"] = {"source": "synthetic", "text_field": "body"}
    errors = schema_errors(config)
    assert any(e.startswith("datasets.d.revision:") for e in errors), errors
    assert any(e.startswith("datasets.s.text_field:") for e in errors), errors


def test_check_config_local_globs_and_hub_splits(config: dict, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(REPO / "config", tmp_path / "config")
    cfg = copy.deepcopy(config)
    cfg["datasets"]["shelf"] = {"source": "local", "files": {"train": ["data/*.parquet", "!data/x*"]}}
    with pytest.raises(FileNotFoundError, match=r"datasets\.shelf\.files\.train: pattern data/\*\.parquet"):
        check_config(cfg, root=tmp_path)
    (tmp_path / "data").mkdir()
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "data" / "a.parquet")
    check_config(cfg, root=tmp_path)

    cfg["datasets"]["fineweb"] = HUB
    cfg["evals"]["fw"] = {"kind": "loss", "dataset": "fineweb", "split": "validation"}
    with pytest.raises(ValueError, match=r"evals\.fw: dataset 'fineweb' has no split 'validation'; valid: "):
        check_config(cfg, root=tmp_path)
    cfg["evals"]["fw"]["split"] = "heldout"
    check_config(cfg, root=tmp_path)
    cfg["evals"]["fw_mc"] = {"kind": "multiple_choice", "dataset": "fineweb", "file": "heldout.jsonl"}
    with pytest.raises(ValueError, match=r"evals\.fw_mc: multiple_choice reads a JSONL file"):
        check_config(cfg, root=tmp_path)
