"""Training metrics: throughput, MFU, memory, the non-finite guard; written to metrics.jsonl, TensorBoard,
the log and, when the environment asks for it (``WANDB_API_KEY`` set, or ``WANDB_MODE=offline``), Weights &
Biases."""

from __future__ import annotations

import json
import logging
import os
import resource
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

# Dense bf16 peak of one device, FLOP/s (datasheet numbers, as torchtitan uses for MFU).
_PEAK_BF16_FLOPS = {"H100": 989.5e12, "H200": 989.5e12, "GH200": 989.5e12, "A100": 312e12, "MI250X": 191.5e12}


def peak_flops_per_device(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of the device, or None where unknown (CPU): MFU is then not reported."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in _PEAK_BF16_FLOPS.items():
        if key in name:
            return flops
    return None


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory reserved by the CUDA caching allocator (the footprint, as torchtitan reports it);
    peak resident set size of the process elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def throughput(tokens: int, elapsed_s: float, world_size: int, flops_per_token: int, peak_flops) -> dict:
    """Tokens/s (all ranks and per device), model TFLOP/s per device and MFU (None where peak is unknown)
    of a window of ``tokens`` trained in ``elapsed_s`` seconds."""
    per_device = tokens / elapsed_s / world_size
    return {
        "tokens_per_s": tokens / elapsed_s,
        "tokens_per_s_per_device": per_device,
        "tflops_per_device": per_device * flops_per_token / 1e12,
        "mfu": per_device * flops_per_token / peak_flops if peak_flops else None,
    }


class NonFiniteGuard:
    """The first step whose loss or gradient norm was NaN or infinite, recorded on the device every step
    (a few tiny kernels, no host sync) and read only at the trainer's sync points: logged steps and before
    every save, where the model's weights are checked too. Training stops there with the step named, so
    a non-finite step between two logged steps never reaches a checkpoint.

    Skipping such a step instead is not offered: without a sync before ``optimizer.step`` it would need a
    copy of the weights and both AdamW moments to restore with ``torch.where`` (3× the model's memory and
    a pass over all of it every step); zeroing the gradients is no skip (AdamW still decays its moments,
    advances its step count and applies weight decay)."""

    def __init__(self, device: torch.device):
        self.first_step = torch.zeros((), dtype=torch.int64, device=device)  # 0: every step finite so far

    def observe(self, step: int, values: list[torch.Tensor]) -> None:
        """Note ``step`` if any of ``values`` (0-dim device tensors: losses, grad norm) is not finite."""
        device = self.first_step.device  # a norm of no gradients is a CPU zero (optim.clip_and_step)
        finite = torch.isfinite(
            torch.stack([v.detach().float().reshape(()).to(device) for v in values])
        ).all()
        self.first_step = torch.where(~finite & (self.first_step == 0), step, self.first_step)

    def check(self, step: int, model: torch.nn.Module | None = None) -> None:
        """Raise FloatingPointError (on every rank alike) if a step so far was non-finite or, with
        ``model``, if a weight is: called before a checkpoint is saved."""
        first = int(self.first_step)  # waits for the device
        if first:
            raise FloatingPointError(
                f"loss or gradient norm is not finite at step {first} (seen at step {step}); stopped "
                f"before any checkpoint of it was saved (lower optimizer.lr or tighten "
                f"optimizer.grad_clip_norm)"
            )
        if model is not None and not finite_weights(model):
            raise FloatingPointError(f"model weights are not finite after step {step}; not saving them")


def finite_weights(model: torch.nn.Module) -> bool:
    """Whether every parameter of every rank is finite (each rank checks its local shards)."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    flags = torch.stack([torch.isfinite(t.detach()).all() for t in local]).all().to(torch.int32)
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
    return bool(flags)


def wandb_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for Weights & Biases: an API key, or offline mode (no account needed);
    ``WANDB_MODE=disabled`` turns it off whatever else is set."""
    if environ.get("WANDB_MODE") == "disabled":
        return False
    return bool(environ.get("WANDB_API_KEY")) or environ.get("WANDB_MODE") == "offline"


def open_wandb(run: str, config: dict, tags: dict):
    """A W&B run for this segment's metrics, or None (not requested; wandb not installed, or W&B failing to
    start: a warning says so and training goes on). One W&B run per lmrepro run and config (id = run +
    config sha256), resumed by every segment; project from ``WANDB_PROJECT`` (default lmrepro), files under
    ``WANDB_DIR`` as wandb does."""
    if not wandb_requested():
        return None
    try:
        import wandb
    except ImportError:
        log.warning(
            "WANDB_API_KEY or WANDB_MODE=offline is set but wandb is not installed "
            "(pip install 'lmrepro[wandb]'); metrics go to metrics.jsonl and TensorBoard only"
        )
        return None
    try:
        return wandb.init(
            project=os.environ.get("WANDB_PROJECT", "lmrepro"),
            id=f"{run}-{tags.get('config_sha256', '')[:12]}".rstrip("-"),
            name=run,
            resume="allow",
            config=config,
            tags=[run],
        )
    except Exception as e:  # noqa: BLE001 - W&B is never required: no server, a bad key, ...
        log.warning(
            "Weights & Biases did not start (%s: %s); metrics go to metrics.jsonl and TensorBoard only "
            "(WANDB_MODE=offline logs without a server, WANDB_MODE=disabled turns W&B off)",
            type(e).__name__,
            " ".join(str(e).split())[:300],
        )
        return None


class MetricsWriter:
    """Rank 0 appends one JSON row per logged step (and logs it to TensorBoard and W&B where enabled); other
    ranks write nothing."""

    def __init__(
        self,
        state_dir: Path,
        enabled: bool,
        tensorboard: bool,
        tags: dict,
        run: str = "run",
        config: dict | None = None,
    ):
        self.enabled = enabled
        self.tags = tags
        self.path = state_dir / "metrics.jsonl"
        self.rows: list[dict] = []
        self._tb = None
        self._wandb = open_wandb(run, config or {}, tags) if enabled else None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(state_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {**row, **self.tags}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        scalars = {
            f"train/{key}": value
            for key, value in row.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "step"
        }
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, row["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=row["step"])
        mfu = f" mfu {row['mfu']:.1%}" if row.get("mfu") is not None else ""
        log.info(
            "step %d  loss %.4f  lr %.2e  grad_norm %.3f  %.0f tokens/s/device%s  mem %.2f GiB  "
            "data wait %.3f s",
            row["step"],
            row["loss"],
            row["lr"],
            row["grad_norm"],
            row["tokens_per_s_per_device"],
            mfu,
            row["peak_memory_gib"],
            row["data_wait_s"],
        )

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def segment_rows(path: Path, origin: str, first_step: int, last_step: int) -> list[dict]:
    """The rows of one segment (by its origin checkpoint), last write of a step wins (retries rewrite)."""
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("origin") == origin and first_step <= row["step"] <= last_step:
                rows[row["step"]] = row
    return [rows[s] for s in sorted(rows)]
