"""lmrepro.io: a failed write is called a full disk only when it is one."""

from __future__ import annotations

import errno

import pytest

from lmrepro import io


def test_a_write_failing_for_space_names_the_target_and_frees_the_partial_folder(tmp_path, monkeypatch):
    partial = tmp_path / ".step-8.partial"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"x" * 100)
    with (
        pytest.raises(io.DiskFullError, match=r"^/.*/step-8: no space left on the device while writing it"),
        io.full_disk_explained(tmp_path / "step-8", partial, needed_bytes=10),
    ):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not partial.exists()
    # torch.save reports a short write without its errno: little space left counts as a full disk.
    partial.mkdir()
    monkeypatch.setattr(io, "free_bytes", lambda path: 5)
    with (
        pytest.raises(io.DiskFullError),
        io.full_disk_explained(tmp_path / "step-8", partial, needed_bytes=10),
    ):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


def test_other_failures_pass_through_untouched(tmp_path):
    partial = tmp_path / ".step-8.partial"
    partial.mkdir()
    with (
        pytest.raises(RuntimeError, match="a bug"),
        io.full_disk_explained(tmp_path / "step-8", partial, needed_bytes=10),
    ):
        raise RuntimeError("a bug")
    assert partial.exists()  # not ours to clean: the caller's own handling decides


class Collected(BaseException):  # like DCP's CheckpointException: a BaseException with per-rank failures
    def __init__(self, failures):
        super().__init__("CheckpointException")
        self.failures = failures


def test_space_errors_are_found_in_the_failures_dcp_collects_from_ranks():
    assert io._raised_for_space(Collected({1: (OSError(errno.EDQUOT, "quota"), None)}))
    assert not io._raised_for_space(Collected({0: (ValueError("x"), None)}))
    try:
        try:
            raise OSError(errno.EFBIG, "too big")
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert io._raised_for_space(outer)
