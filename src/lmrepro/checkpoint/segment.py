"""The checkpoint policy of one training segment (step-P → step-N): where it starts, what its checkpoints
record, rolling saves into the undeclared ``state/`` folder and the final, declared save.

A rolling checkpoint is resumed only when it descends from the same start checkpoint under the same
config (its lineage: ``origin`` and ``config_sha256`` in meta.json), so stale state of an edited or rerun
chain is never picked up; it is deleted instead. A rolling checkpoint that fails its checksums (a
truncated or deleted file, garbled bytes) is deleted too, with a warning, and the next older one is tried,
down to the segment's start checkpoint, which is never deleted: a damaged start is a one-line error.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lmrepro.checkpoint import checksums, dcp
from lmrepro.config import JobConfig, config_sha256
from lmrepro.model.build import ModelSpec, model_info
from lmrepro.train.metrics import segment_rows

log = logging.getLogger(__name__)


def checkpoint_info(
    job: JobConfig, args: ModelSpec, step: int, tokens_seen: int, origin: str | None, **fields
) -> dict:
    """The meta.json of a checkpoint of ``job`` (dcp.save adds checkpoint_id, contents, provenance).

    ``origin`` is the checkpoint_id of the segment's start checkpoint (None for step-0); ``fields`` add
    what only some checkpoints record (step-0: ``init``; a segment: ``lr``, ``data``, ``parallel``).
    """
    return {
        "run": job.run,
        "step": step,
        "tokens_seen": tokens_seen,
        "config_sha256": config_sha256(job),
        "origin": origin,
        **model_info(args),
        "seq_len": job.data.seq_len,
        **objective_info(job),
        **fields,
    }


def objective_info(job: JobConfig) -> dict:
    """What evaluation and export must know of the training objective: {"objective"} (+ "mlm": masking)."""
    if job.training.objective != "mlm":
        return {"objective": job.training.objective}
    mlm = job.training.mlm
    masking = {
        "mask_ratio": mlm.mask_ratio,
        "mask_token_id": mlm.mask_token_id,
        "never_mask_ids": list(mlm.never_mask_ids),
        "replacement": mlm.replacement,
    }
    return {"objective": "mlm", "mlm": masking}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


class SegmentCheckpointer:
    """Picks and loads the segment's start, writes its rolling checkpoints and its final checkpoint."""

    def __init__(self, job: JobConfig, resume_from: Path, save_to: Path, until_step: int):
        self.job = job
        self.state_dir = Path(job.run_dir) / "state"
        self.rolling_dir = self.state_dir / "checkpoints"
        self.resume_from = resume_from
        self.save_to = save_to
        self.until_step = until_step
        start = dcp.read_checkpoint_info(resume_from)
        self.start_step: int = start["step"]
        self.origin: str = start["checkpoint_id"]  # the lineage of every checkpoint this segment writes
        self.config_sha = config_sha256(job)
        self.process_group: dist.ProcessGroup | None = None  # async saves: a group with a CPU backend
        self._pending: dcp.PendingSave | None = None
        if not self.start_step < until_step <= job.training.steps:
            raise ValueError(
                f"segment {self.start_step} → {until_step} is not within the run's training.steps = "
                f"{job.training.steps}"
            )

    def info(self, args: ModelSpec, step: int, tokens_seen: int, **fields) -> dict:
        return checkpoint_info(self.job, args, step, tokens_seen, self.origin, **fields)

    def pick_start(self) -> Path:
        """The newest rolling checkpoint of this very segment, else the segment's start checkpoint.

        Rolling checkpoints of any other lineage (an earlier segment, an edited or rerun chain) are
        scratch that can never be resumed; rank 0 deletes them so they cannot collide with this
        segment's saves or crowd its checkpoints out of keep_latest_k. So are damaged ones (checksums),
        after a warning that names the file; the next older one is tried instead.
        """
        start, stale = self.resume_from, []
        for step, path in reversed(dcp.rolling_checkpoints(self.rolling_dir)):
            try:
                info = dcp.read_checkpoint_info(path)
            except checksums.CorruptCheckpoint as e:
                log.warning("rolling checkpoint %s is damaged (%s); deleting it", path, e)
                stale.append(path)
                continue
            same_lineage = (
                info.get("config_sha256") == self.config_sha
                and info.get("origin") == self.origin
                and self.start_step < step <= self.until_step
            )
            if same_lineage and start is self.resume_from:
                try:
                    checksums.verify(path)
                except checksums.CorruptCheckpoint as e:
                    log.warning("rolling checkpoint %s is damaged: %s; falling back to an older one", path, e)
                    stale.append(path)
                    continue
                log.info("resuming from rolling checkpoint %s (step %d)", path, step)
                start = path
            elif not same_lineage:
                stale.append(path)
        dcp.discard(stale, self.rolling_dir)
        return start

    def load(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_state: dict,
        data_template: Callable[[dict], dict],
    ) -> Path:
        """Load the start checkpoint into model, optimizer and ``train_state`` (a template filled in place;
        its ``data`` entry comes from ``data_template(meta.json)``, which names a resume's data keys)."""
        path = self.pick_start()
        train_state["data"] = data_template(dcp.read_checkpoint_info(path))
        dcp.load(path, model, optimizer, train_state)
        return path

    def save_rolling(self, model: nn.Module, optimizer, train_state: dict, info: dict) -> None:
        """A rolling checkpoint into state/; with checkpoint.async_save the loop waits for the CPU copy
        only, and the checkpoint becomes complete (meta.json, rename, purge) at the next save or at wait()."""
        self.wait()
        started = time.monotonic()
        path = self.rolling_dir / f"step-{info['step']}"
        if not self.job.checkpoint.async_save:
            dcp.save(path, model, optimizer, train_state, info)
            dcp.purge_old(self.rolling_dir, self.job.checkpoint.keep_latest_k)
            elapsed = time.monotonic() - started
            log.info("rolling checkpoint at step %d saved in %.2f s", info["step"], elapsed)
            return
        self._pending = dcp.save_async(path, model, optimizer, train_state, info, self.process_group)
        log.info(
            "rolling checkpoint at step %d staged in %.2f s (written in the background)",
            info["step"],
            time.monotonic() - started,
        )

    def wait(self) -> None:
        """Complete the rolling checkpoint being written in the background, if any (every rank calls)."""
        if self._pending is None:
            return
        started = time.monotonic()
        pending, self._pending = self._pending, None
        pending.finish()
        dcp.purge_old(self.rolling_dir, self.job.checkpoint.keep_latest_k)
        elapsed = time.monotonic() - started
        log.info("rolling checkpoint %s complete (waited %.2f s)", pending.path.name, elapsed)

    def close(self) -> None:
        self.wait()

    def save_final(self, model: nn.Module, optimizer, train_state: dict, info: dict) -> None:
        """The declared step-N, with this segment's rows of state/metrics.jsonl as its metrics.jsonl."""
        self.wait()
        # Only rank 0 writes metrics.jsonl and the extra files; other ranks must not read it mid-append.
        metrics = self.state_dir / "metrics.jsonl"
        rows = segment_rows(metrics, self.origin, self.start_step + 1, info["step"]) if _rank() == 0 else []
        text = "".join(json.dumps(r) + "\n" for r in rows)
        dcp.save(self.save_to, model, optimizer, train_state, info, extra_files={"metrics.jsonl": text})
        log.info("segment checkpoint %s saved", self.save_to)
