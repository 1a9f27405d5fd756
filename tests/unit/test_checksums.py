"""Checkpoint checksums: recorded at save (sync and async), verified at load; damage is one line naming
the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmrepro.checkpoint import checksums, dcp
from lmrepro.logs import run_main


def _save(path: Path, async_save: bool = False) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 16)).sum().backward()
    optimizer.step()
    state = {"step": 1}
    if async_save:
        dcp.save_async(path, model, optimizer, state, {"step": 1}).finish()
    else:
        dcp.save(path, model, optimizer, state, {"step": 1}, extra_files={"metrics.jsonl": "{}\n"})
    return path


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return _save(tmp_path_factory.mktemp("ckpt") / "step-1")


def _copy(saved: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(saved, tmp_path / "step-1"))


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_manifest_lists_every_file_with_size_and_digest(tmp_path: Path, async_save: bool) -> None:
    path = _save(tmp_path / "step-1", async_save)
    manifest = json.loads((path / checksums.MANIFEST).read_text())["files"]
    names = sorted(p.name for p in path.iterdir() if p.name != checksums.MANIFEST)
    assert sorted(manifest) == names and ".metadata" in names and "meta.json" in names
    assert any(n.endswith(".distcp") for n in names)
    for name, entry in manifest.items():
        assert entry["bytes"] == (path / name).stat().st_size
    assert dcp.read_checkpoint_info(path)["checksums"] == checksums.MANIFEST
    checksums.verify(path)


def _truncate_distcp(path: Path) -> str:
    distcp = sorted(path.glob("*.distcp"))[0]
    distcp.write_bytes(distcp.read_bytes()[:-10])
    return rf"{distcp.name} is \d+ bytes, .* recorded"


def _delete_metadata(path: Path) -> str:
    (path / ".metadata").unlink()
    return r"\.metadata is missing \(listed in .*checksums\.json\)"


def _garble_distcp(path: Path) -> str:
    distcp = sorted(path.glob("*.distcp"))[0]
    raw = bytearray(distcp.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    distcp.write_bytes(bytes(raw))
    return rf"{distcp.name}: xxh3_128 digest does not match"


def _garble_meta(path: Path) -> str:
    (path / "meta.json").write_text('{"step": 1, "chec')
    return r"meta\.json is \d+ bytes"  # caught by its checksum before anything parses it


def _garble_manifest(path: Path) -> str:
    (path / checksums.MANIFEST).write_text('{"algorithm": "xxh3_128", "files": {"meta.json": {}}}')
    return r"checksums\.json is not a valid checksum manifest"


def _delete_manifest(path: Path) -> str:
    (path / checksums.MANIFEST).unlink()
    return r"checksums\.json is missing"


@pytest.mark.parametrize(
    "damage",
    [_truncate_distcp, _delete_metadata, _garble_distcp, _garble_meta, _garble_manifest, _delete_manifest],
)
def test_damage_is_one_line_naming_the_file(saved: Path, tmp_path: Path, damage, capsys) -> None:
    path = _copy(saved, tmp_path)
    pattern = damage(path)
    with pytest.raises(checksums.CorruptCheckpoint, match=pattern):
        checksums.verify(path)
    with pytest.raises(SystemExit) as e:  # what a workflow script shows: one line, no traceback
        run_main(lambda: dcp.load(path, torch.nn.Linear(1, 1), None, {}))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_checkpoint_without_manifest_from_an_older_lmrepro_loads_with_a_warning(saved, tmp_path, caplog):
    path = _copy(saved, tmp_path)
    (path / checksums.MANIFEST).unlink()
    info = json.loads((path / "meta.json").read_text())
    del info["checksums"]
    (path / "meta.json").write_text(json.dumps(info))
    checksums.verify(path)
    assert "not verified" in caplog.text


def test_every_async_save_stages_with_a_stager_of_its_own(tmp_path, monkeypatch) -> None:
    """torch 2.11's async_save leaves the stager it was given closed (its copier table cleared), so a stager
    shared by two saves fails at the second (KeyError: <class 'type'> on the H200). Simulated here: each
    save's stager is closed once DCP has staged from it, and both saves still complete and verify."""
    import torch.distributed.checkpoint as torch_dcp

    real = torch_dcp.async_save
    staged_with = []

    def closing_async_save(state, *, async_stager, **kwargs):
        future = real(state, async_stager=async_stager, **kwargs)
        staged_with.append(async_stager)
        async_stager.close()  # what 2.11 does to a stager passed in
        return future

    monkeypatch.setattr(torch_dcp, "async_save", closing_async_save)
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (1, 2):
        dcp.save_async(tmp_path / f"step-{step}", model, optimizer, {"step": step}, {"step": step}).finish()
        checksums.verify(tmp_path / f"step-{step}")
    assert len(staged_with) == 2 and staged_with[0] is not staged_with[1]
