"""The checkpoint policy of one training segment (step-P → step-N): where it starts, what its checkpoints
record, rolling saves into the undeclared ``state/`` folder and the final, declared save.

A rolling checkpoint is resumed only when it descends from the same start checkpoint under the same
config (its lineage: ``origin`` and ``config_sha256`` in meta.json), so stale state of an edited or rerun
chain is never picked up; it is deleted instead.
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

from lmrepro.checkpoint import dcp
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
        **fields,
    }


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
        segment's saves or crowd its checkpoints out of keep_latest_k.
        """
        start, stale = self.resume_from, []
        for step, path in reversed(dcp.rolling_checkpoints(self.rolling_dir)):
            info = dcp.read_checkpoint_info(path)
            same_lineage = (
                info.get("config_sha256") == self.config_sha
                and info.get("origin") == self.origin
                and self.start_step < step <= self.until_step
            )
            if same_lineage and start is self.resume_from:
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
        started = time.monotonic()
        dcp.save(self.rolling_dir / f"step-{info['step']}", model, optimizer, train_state, info)
        dcp.purge_old(self.rolling_dir, self.job.checkpoint.keep_latest_k)
        log.info("rolling checkpoint at step %d saved in %.2f s", info["step"], time.monotonic() - started)

    def save_final(self, model: nn.Module, optimizer, train_state: dict, info: dict) -> None:
        """The declared step-N, with this segment's rows of state/metrics.jsonl as its metrics.jsonl."""
        # Only rank 0 writes metrics.jsonl and the extra files; other ranks must not read it mid-append.
        metrics = self.state_dir / "metrics.jsonl"
        rows = segment_rows(metrics, self.origin, self.start_step + 1, info["step"]) if _rank() == 0 else []
        text = "".join(json.dumps(r) + "\n" for r in rows)
        dcp.save(self.save_to, model, optimizer, train_state, info, extra_files={"metrics.jsonl": text})
        log.info("segment checkpoint %s saved", self.save_to)
