"""Weights & Biases beside TensorBoard: on only when WANDB_API_KEY or WANDB_MODE=offline is set, never
required (a warning when asked for but not installed), and the offline run holds the logged values."""

from __future__ import annotations

import json
import logging
import struct
import sys

import pytest

from lmrepro.train.metrics import MetricsWriter, wandb_requested

TAGS = {"origin": "step-0-abc", "config_sha256": "0123456789abcdef"}


def _row(step: int, loss: float) -> dict:
    return {"step": step, "loss": loss, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s_per_device": 10.0,
            "peak_memory_gib": 0.1, "data_wait_s": 0.0, "mixture/web": 0.5}  # fmt: skip


def _history(path) -> list[dict]:
    """The history rows of an offline ``.wandb`` file: a 7-byte W&B header, then LevelDB log records
    (32 KiB blocks; crc32, length, type; full = 1, first = 2, middle = 3, last = 4) of ``Record`` protos."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pending, rows = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                )
    return rows


def test_requested_only_by_api_key_or_offline_mode() -> None:
    assert not wandb_requested({})
    assert not wandb_requested({"WANDB_MODE": "online"})
    assert wandb_requested({"WANDB_MODE": "offline"})
    assert wandb_requested({"WANDB_API_KEY": "k"})
    assert not wandb_requested({"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"})


def test_a_wandb_that_does_not_start_is_a_warning_and_training_goes_on(tmp_path, monkeypatch, caplog) -> None:
    """A key but no reachable server (as here): wandb.init raises after its timeout; W&B is never required."""
    wandb = pytest.importorskip("wandb")

    def no_server(**kwargs):
        raise wandb.errors.CommError("Failed to get resume status: context deadline exceeded")

    monkeypatch.setattr(wandb, "init", no_server)
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with caplog.at_level(logging.WARNING):
        writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False, tags=TAGS, run="r")
    assert "Weights & Biases did not start (CommError: Failed to get resume status" in caplog.text
    writer.write(_row(1, 2.5))
    writer.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 2.5


def test_not_installed_is_a_warning_and_metrics_still_written(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with caplog.at_level(logging.WARNING):
        MetricsWriter(tmp_path, enabled=True, tensorboard=False, tags=TAGS).close()
    assert "wandb" not in caplog.text  # not asked for: not imported, nothing said
    monkeypatch.setenv("WANDB_MODE", "offline")
    with caplog.at_level(logging.WARNING):
        writer = MetricsWriter(tmp_path, enabled=True, tensorboard=False, tags=TAGS, run="r")
    assert "wandb is not installed" in caplog.text and "lmrepro[wandb]" in caplog.text
    writer.write(_row(1, 2.5))
    writer.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 2.5


def test_offline_run_holds_the_logged_losses(tmp_path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    writer = MetricsWriter(
        tmp_path, enabled=True, tensorboard=False, tags=TAGS, run="tiny", config={"seed": 7}
    )
    for step, loss in ((1, 5.5), (2, 4.25), (3, 3.125)):
        writer.write(_row(step, loss))
    writer.close()
    (run_file,) = tmp_path.glob("wandb/offline-run-*-tiny-0123456789ab/run-tiny-0123456789ab.wandb")
    history = _history(run_file)
    assert [(row["_step"], row["train/loss"]) for row in history] == [(1, 5.5), (2, 4.25), (3, 3.125)]
    assert all(row["train/mixture/web"] == 0.5 for row in history)
