"""Bases and tokenizers from the Hugging Face Hub (lmrepro.hub, rule fetch_hub), offline from a cache laid
out as huggingface_hub lays it out (models--org--name/snapshots/<commit>/, refs/main), and stand-in bases
written by transformers (lmrepro.checkpoint.standin_base)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lmrepro.checkpoint.convert import read_base_args
from lmrepro.checkpoint.standin_base import standin_args, write_standin_base
from lmrepro.workflow import base_folder, check_config

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"flavor": "debug", "vocab_size": 512, "overrides": {"dim": 32, "n_layers": 1, "ffn_dim": 64}}


def put_in_cache(cache: Path, repo: str, folder: Path) -> Path:
    """The documented cache layout: the snapshot of a commit, and refs/main naming that commit."""
    entry = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, entry / "snapshots" / COMMIT)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(COMMIT)
    return entry / "snapshots" / COMMIT


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HF_HUB_OFFLINE=1 with a cache holding org/tiny-llama (an HF Llama written by transformers) and
    org/tiny-tok (a tokenizer.json folder)."""
    from huggingface_hub import constants
    from tokenizers import Tokenizer, models

    cache = tmp_path / "hub-cache"
    write_standin_base({"format": "hf", "seed": 0, "model": TINY}, tmp_path / "model")
    put_in_cache(cache, "org/tiny-llama", tmp_path / "model")
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    vocab = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|eot_id|>": 2, "<unk>": 3}
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(tok_dir / "tokenizer.json"))
    put_in_cache(cache, "org/tiny-tok", tok_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def with_hub_base(root: Path, repo: str, **model_overrides) -> dict:
    cfg = copy.deepcopy(yaml.safe_load((root / "config" / "config.yaml").read_text()))
    cfg["bases"] = {
        "code": {"source": "hub", "repo": repo, "revision": "main", "format": "hf", "vocab": "keep"}
    }
    cfg["runs"]["tiny"]["init"] = "code"
    cfg["runs"]["tiny"]["overrides"]["model"] = {"overrides": {**TINY["overrides"], **model_overrides}}
    return cfg


def schema_valid(cfg: dict) -> dict:
    import jsonschema

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    jsonschema.validate(cfg, yaml.safe_load(schema.read_text()))
    return cfg


def test_a_cached_hub_base_is_checked_offline_at_parse_time(offline_cache: Path, root: Path) -> None:
    check_config(schema_valid(with_hub_base(root, "org/tiny-llama")), root)
    with pytest.raises(ValueError, match="model.n_layers"):  # the base's config.json was read from the cache
        check_config(with_hub_base(root, "org/tiny-llama", n_layers=2), root)


def test_an_uncached_hub_base_offline_stops_before_any_job(offline_cache: Path, root: Path) -> None:
    with pytest.raises(FileNotFoundError) as e:
        check_config(with_hub_base(root, "org/missing"), root)
    first = str(e.value).splitlines()[0]
    assert first.startswith(
        "bases.code: org/missing at revision main: is not in the cache and HF_HUB_OFFLINE=1"
    )
    assert "hf download org/missing --revision main --include '*.json'" in first


def test_the_fetch_rule_resolves_offline_to_the_cached_snapshot(offline_cache: Path, tmp_path: Path) -> None:
    """The rule fetch_hub's script, offline: the link points into the cache and the manifest pins it."""
    spec = {"source": "hub", "repo": "org/tiny-llama", "revision": "main", "format": "hf"}
    out = tmp_path / "results" / "hub" / "bases" / "code"
    env = {**os.environ, "HF_HUB_CACHE": str(offline_cache), "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(REPO / "src")
    script = REPO / "workflow" / "scripts" / "fetch_hub.py"
    args = ["--section", "bases", "--name", "code", "--spec", json.dumps(spec), "--out", str(out)]

    def fetch_rule() -> subprocess.CompletedProcess:
        command = [sys.executable, script, *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)

    done = fetch_rule()
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["commit"] == COMMIT and "config.json" in manifest["files"]
    assert (out / "snapshot").resolve() == (offline_cache / "models--org--tiny-llama" / "snapshots" / COMMIT)
    assert base_folder("code", spec) == "results/hub/bases/code/snapshot"
    assert read_base_args("hf", out / "snapshot") == standin_args({"model": TINY})
    spec["repo"] = "org/missing"
    args[5] = json.dumps(spec)
    done = fetch_rule()
    assert done.returncode == 2 and "hf download org/missing --revision main" in done.stderr


def test_a_hub_tokenizer_is_read_from_the_cache_at_parse_time(offline_cache: Path, root: Path) -> None:
    cfg = copy.deepcopy(yaml.safe_load((root / "config" / "config.yaml").read_text()))
    cfg["tokenizers"]["hubtok"] = {"kind": "hf", "repo": "org/tiny-tok", "revision": "main"}
    cfg["runs"]["tiny"]["tokenizer"] = "hubtok"
    cfg["datasets"]["synthetic"] |= {"packing": "separator", "separator_token": "<|eot_id|>"}
    check_config(schema_valid(cfg), root)
    cfg["datasets"]["synthetic"]["separator_token"] = "<|eom_id|>"
    with pytest.raises(ValueError, match=re.escape("'<|eom_id|>' is not a token of tokenizer 'hubtok'")):
        check_config(cfg, root)
    cfg["tokenizers"]["hubtok"]["repo"] = "org/no-tok"
    with pytest.raises(FileNotFoundError, match="^tokenizers.hubtok: org/no-tok at revision main: is not in"):
        check_config(cfg, root)


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_a_standin_base_is_the_same_model_in_either_format(tmp_path: Path, fmt: str) -> None:
    """Meta's layout holds the HF weights in Meta names (q/k permuted back): both convert to one DCP."""
    import torch

    from lmrepro.checkpoint.convert import OPENERS

    spec = {"format": fmt, "seed": 3, "model": TINY}
    folder = write_standin_base(spec, tmp_path / fmt)
    assert read_base_args(fmt, folder) == standin_args(spec)
    source = OPENERS[fmt](folder)
    ours = {key: source.load(key) for key in source.shapes}
    hf_source = OPENERS["hf"](write_standin_base({**spec, "format": "hf"}, tmp_path / "ref"))
    assert set(ours) == set(hf_source.shapes)
    for key, value in ours.items():
        torch.testing.assert_close(value, hf_source.load(key), rtol=0, atol=0)
    if fmt == "meta":
        assert json.loads((folder / "params.json").read_text())["dim"] == 32
