"""The trainer: one segment of a run, from checkpoint step-P to checkpoint step-N.

A run of S steps is trained in segments (one Snakemake job each). Within a segment the trainer saves
rolling checkpoints into the undeclared state/ folder, so a killed or timed-out job that is retried
resumes where it stopped; SIGTERM/SIGUSR1 (Slurm's wall-time warning) triggers a save and a non-zero
exit. A rolling checkpoint is only resumed when it descends from the same start checkpoint under the
same config, so stale state of an edited run is never picked up.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import warnings
from contextlib import nullcontext
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmrepro.checkpoint import dcp
from lmrepro.checkpoint.init_base import INIT_RECORD, init_from_base, init_from_run_checkpoint
from lmrepro.checkpoint.segment import SegmentCheckpointer, checkpoint_info
from lmrepro.config import JobConfig, to_dict, token_weights_file
from lmrepro.data.loader import build_loader
from lmrepro.data.prefetch import initial_data_state
from lmrepro.model.attention import flash_attn_kernel, flash_attn_version, sdpa_backend
from lmrepro.model.build import build_model as build_model_of
from lmrepro.model.build import model_flops_per_token, output_layer_name
from lmrepro.model.llama import Transformer
from lmrepro.model.losses import load_token_weights
from lmrepro.train import metrics as metrics_lib
from lmrepro.train.float8 import apply_float8
from lmrepro.train.kfac import build_kfac
from lmrepro.train.layout import Layout, checked_model_args, plan_layout
from lmrepro.train.objective import build_objective
from lmrepro.train.optim import build_optimizer, clip_and_step, set_lr
from lmrepro.train.parallel import ParallelDims, build_mesh, dp_mesh, dp_rank_and_size, parallelize
from lmrepro.train.schedule import lr_at
from lmrepro.train.validation import Validator

__all__ = ["Layout", "Trainer", "checked_model_args", "init_checkpoint", "plan_layout", "run_segment"]

log = logging.getLogger(__name__)

EXIT_PREEMPTED = 143  # non-zero so Snakemake/Slurm retry the job, which then resumes from state/


def build_model(job: JobConfig, device: torch.device | str = "meta") -> torch.nn.Module:
    with torch.device(device):
        return build_model_of(checked_model_args(job))


def init_checkpoint(
    job: JobConfig, save_to: Path, base: Path | None = None, from_run: Path | None = None
) -> dict:
    """Write step-0, model only (a seed checkpoint): the seeded random initialisation, or a converted base.

    Every segment, whatever its parallel layout, starts from a checkpoint, so the initial weights are
    identical for 1 process, FSDP or TP runs of the same seed. With ``base`` (``results/init/{base}/dcp``)
    the base's weights replace the random ones; keys the base left out (``vocab: drop``) keep the seeded
    init, and step-0 records what came from where in ``init.json``. With ``from_run`` (another run's
    segment checkpoint: an init chain) every model weight comes from it, strictly; the optimizer is fresh.
    """
    torch.manual_seed(job.training.seed)
    model = build_model(job, "meta")
    model.to_empty(device="cpu")
    model.init_weights()
    if from_run is not None:
        init_record, base = init_from_run_checkpoint(model, from_run), from_run
    else:
        init_record = init_from_base(model, base) if base is not None else None
    init = {"base": str(base), "base_checkpoint_id": init_record["base_checkpoint_id"]} if base else None
    info = checkpoint_info(job, model.args, step=0, tokens_seen=0, origin=None, init=init)
    data_state = initial_data_state(job.data.seed, job.data.seq_len)
    train_state = {"step": 0, "tokens_seen": 0, "data": data_state, "rng": torch.get_rng_state()}
    if (kfac := build_kfac(model, job.optimizer.kfac, output_layer_name(model))) is not None:
        train_state["kfac"] = kfac.state_dict()  # fresh: no factors yet; the template of every resume
    extra = {INIT_RECORD: json.dumps(init_record, indent=2) + "\n"} if init_record else None
    return dcp.save(save_to, model, None, train_state, info, extra_files=extra)


class Trainer:
    def __init__(self, job: JobConfig, resume_from: Path, save_to: Path, until_step: int):
        self.job = job
        self.checkpointer = SegmentCheckpointer(job, resume_from, save_to, until_step)
        self.state_dir = self.checkpointer.state_dir
        self.until_step = until_step
        self._stop_signal: int | None = None
        self.step = self.tokens_seen = 0  # set from the checkpoint by _load
        self.layout = plan_layout(job, int(os.environ.get("WORLD_SIZE", "1")))
        self.dims: ParallelDims = self.layout.dims
        self._setup_distributed()
        self._setup_model_and_data()
        self._load()

    # ---- setup -------------------------------------------------------------------------------
    def _setup_distributed(self) -> None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.device = torch.device("cpu")
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        if world > 1 and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            timeout = timedelta(seconds=int(os.environ.get("LMREPRO_PG_TIMEOUT_S", "600")))
            dist.init_process_group(backend, timeout=timeout)
        # Host-side agreement (the stop flag) goes over gloo: a CPU tensor in an NCCL collective would
        # have to pass through the GPU and wait for it.
        nccl = dist.is_initialized() and dist.get_backend() == "nccl"
        self._host_group = dist.new_group(backend="gloo") if nccl else None
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        if dist.is_initialized() and self.job.checkpoint.async_save:
            # The background writer's collectives get a gloo group of their own: on the training group
            # they would interleave with FSDP's collectives in another order on each rank.
            self.checkpointer.process_group = dist.new_group(backend="gloo")
        self.mesh = build_mesh(self.dims, self.device.type)
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        log.warning("received signal %d: will checkpoint at the end of this step and exit", signum)
        self._stop_signal = signum

    def _setup_model_and_data(self) -> None:
        job = self.job
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[job.training.dtype]
        self.compute_dtype = dtype
        self.model_args = self.layout.model_args
        with torch.device("meta"):
            self.model = build_model_of(self.model_args)
        self._set_numerics(job.training)
        self.loss_parallel = self.dims.tp > 1 and job.parallel.loss_parallel
        parallelize(
            self.model,
            self.mesh,
            dtype,
            activation_checkpoint=job.training.activation_checkpoint,
            compile=job.training.compile,
            compile_mode=job.training.compile_mode,
            loss_parallel=self.loss_parallel,
            reshard_after_forward=job.parallel.fsdp_reshard_after_forward,
        )
        self.fsdp = dp_mesh(self.mesh) is not None
        self.model.to_empty(device=self.device)
        with warnings.catch_warnings():  # random init of DTensors on CPU warns; the checkpoint overwrites it
            warnings.filterwarnings("ignore", message="DTensor random operators")
            self.model.init_weights()  # fills the non-persistent RoPE buffer
        self.optimizer = build_optimizer(self.model, job.optimizer, fused=self.device.type == "cuda")
        self.kfac = build_kfac(self.model, job.optimizer.kfac, output_layer_name(self.model))

        seq_len = job.data.seq_len
        dp_rank, dp_size = dp_rank_and_size(self.dims)
        self.dp_size = dp_size
        weights_file = token_weights_file(job)
        self.token_weights = None
        if weights_file is not None:
            self.token_weights = load_token_weights(weights_file, self.model_args.vocab_size).to(self.device)
        self.micro_batch_sequences = self.layout.micro_batch_sequences
        self.grad_accum_steps = self.layout.grad_accum_steps
        self.loader = build_loader(
            job.data,
            global_batch_sequences=self.layout.global_batch_sequences,
            dp_rank=dp_rank,
            dp_size=dp_size,
            vocab_size=self.model_args.vocab_size,
        )
        self.objective = build_objective(
            job.training,
            vocab_size=self.model_args.vocab_size,
            grad_accum_steps=self.grad_accum_steps,
            dp_size=dp_size,
            tp_size=self.dims.tp,
            host_group=self._host_group,
        )
        self.validator = (
            Validator(job.validation, seq_len, dp_rank, dp_size, self.micro_batch_sequences)
            if job.validation.every_steps > 0
            else None
        )
        self.flops_per_token = model_flops_per_token(self.model, seq_len)
        self.peak_flops = metrics_lib.peak_flops_per_device(self.device)
        self.nonfinite = metrics_lib.NonFiniteGuard(self.device)

    def _set_numerics(self, training) -> None:
        """float8 Linears, the attention kernel and the one-GPU residual dtype, on the meta model before
        compile and FSDP; a setting this machine cannot run is a one-line ValueError naming its key.
        Llama only (config.validate refuses them with model.hf)."""
        if not isinstance(self.model, Transformer):
            return
        self.model.residual_fp32 = training.residual_dtype == "float32"
        converted = apply_float8(self.model, training.float8, self.device)
        if converted:
            log.info("float8 %s: %d Linear layers converted (torchao)", training.float8, converted)
        if training.attention_backend == "flash_attn":
            self.model.set_attention_kernel(flash_attn_kernel(self.device))
            log.info("attention: the flash-attn package (%s)", flash_attn_version())

    def _load(self) -> None:
        template = self._train_state()  # streaming: the data template names the checkpoint's stream keys
        path = self.checkpointer.load(self.model, self.optimizer, template, self.loader.resume_template)
        self.step = int(template["step"])
        self.tokens_seen = int(template["tokens_seen"])
        self.loader.load_state_dict(template["data"])
        torch.set_rng_state(template["rng"])
        if self.kfac is not None:
            self.kfac.load_state_dict(template["kfac"])
        log.info("loaded %s at step %d (%d tokens seen)", path, self.step, self.tokens_seen)

    # ---- checkpoints ---------------------------------------------------------------------------
    def _train_state(self) -> dict:
        state = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "data": self.loader.state_dict(),
            "rng": torch.get_rng_state(),
        }
        if self.kfac is not None:  # factors, eigendecompositions, step counter: a resume is exact
            state["kfac"] = self.kfac.state_dict()
        return state

    def _info(self) -> dict:
        dims = self.dims
        return self.checkpointer.info(
            self.model_args,
            self.step,
            self.tokens_seen,
            lr=lr_at(self.step, self.job.optimizer.lr, self.job.training.steps, self.job.schedule),
            data=self.loader.common_state(),  # what a resume must know before it names the data keys
            parallel={
                "world_size": dims.world_size,
                "dp_shard": dims.dp_shard,
                "dp_replicate": dims.dp_replicate,
                "tp": dims.tp,
            },
        )

    def save_rolling(self) -> None:
        self.nonfinite.check(self.step, self.model)  # never a checkpoint of non-finite weights
        self.checkpointer.save_rolling(self.model, self.optimizer, self._train_state(), self._info())

    def save_final(self) -> None:
        self.nonfinite.check(self.step, self.model)
        self.checkpointer.save_final(self.model, self.optimizer, self._train_state(), self._info())

    # ---- training ------------------------------------------------------------------------------
    def forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, normaliser: float | None, loss_divisor: int
    ) -> torch.Tensor:
        """Loss of one micro-batch (its mean, or its sum / normaliser: train/objective.py), backpropagated
        divided by loss_divisor."""
        with self._loss_context():
            loss = self._loss(inputs, targets, normaliser)
            (loss / loss_divisor).backward()
        return loss.detach().full_tensor() if hasattr(loss, "full_tensor") else loss.detach()

    def _loss(self, inputs: torch.Tensor, targets: torch.Tensor, normaliser: float | None) -> torch.Tensor:
        # FSDP casts parameters itself (MixedPrecisionPolicy); without FSDP, autocast does it.
        autocast = self.compute_dtype != torch.float32 and not self.fsdp
        precision = torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=autocast)
        with sdpa_backend(self.job.training.attention_backend), precision:
            if self.loss_parallel:  # logits stay vocabulary-sharded DTensors [micro, seq, vocab / tp]
                logits = self.model(inputs).flatten(0, 1).float()
                if normaliser is None:
                    return F.cross_entropy(logits, targets.flatten())
                return F.cross_entropy(logits, targets.flatten(), reduction="sum") / normaliser
            # output projection fused with the loss, chunk by chunk (model/losses.py); a model.hf model
            # takes no normaliser (its objective is causal: config.validate)
            if normaliser is None:
                return self.model(inputs, targets)
            return self.model(inputs, targets, normaliser)

    def validation_loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss of a held-out batch, through the training forward (no gradients)."""
        with self._loss_context():
            loss = self._loss(inputs, targets, None)
        return loss.full_tensor() if hasattr(loss, "full_tensor") else loss

    def forward_backward_weighted(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        target_weights: torch.Tensor,
        normaliser: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss share, plain loss sum) of one micro-batch; the share is sum(w · ce) over the
        micro-batch divided by the global batch's weight sum, so the shares of all micro-batches and ranks
        add up to the global weighted mean (model/losses.py). FSDP averages gradients over the dp ranks,
        so the share is backpropagated times dp: the ranks' gradients then add up."""
        autocast = self.compute_dtype != torch.float32 and not self.fsdp
        precision = torch.autocast(self.device.type, dtype=self.compute_dtype, enabled=autocast)
        with sdpa_backend(self.job.training.attention_backend), precision:
            share, plain = self.model(inputs, targets, normaliser=normaliser, target_weights=target_weights)
        (share * self.dp_size).backward()
        return share.detach(), plain

    def _weighted_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> dict:
        """Token-weighted step: the normaliser is the weight sum of the GLOBAL batch, known before any
        forward; returns the unweighted loss per token and the weighted loss of the global batch."""
        target_weights = self.token_weights[targets.to(self.device)]
        normaliser = target_weights.sum()
        if dist.is_initialized():
            dist.all_reduce(normaliser, op=dist.ReduceOp.SUM)
        sums = torch.zeros(2, device=self.device)  # weighted loss, plain loss sum
        for rows, x, y in self._micro_batches(inputs, targets):
            share, ce_sum = self.forward_backward_weighted(x, y, target_weights[rows], normaliser)
            sums += torch.stack([share, ce_sum])
        if dist.is_initialized():
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        return {"loss": sums[1] / self.job.training.global_batch_tokens, "weighted_loss": sums[0]}

    def _loss_context(self):
        if not self.loss_parallel:
            return nullcontext()
        from torch.distributed.tensor.parallel import loss_parallel

        return loss_parallel()

    def _micro_batches(self, inputs: torch.Tensor, targets: torch.Tensor):
        """(rows, inputs, targets) of each micro-batch, on the device; FSDP syncs gradients on the last."""
        micro = self.micro_batch_sequences
        for i in range(self.grad_accum_steps):
            if self.fsdp:
                self.model.set_requires_gradient_sync(i == self.grad_accum_steps - 1)
            batch = slice(i * micro, (i + 1) * micro)
            x = inputs[batch].to(self.device, non_blocking=True)
            y = targets[batch].to(self.device, non_blocking=True)
            yield batch, x, y

    def _objective_loss(self, batch) -> dict:
        """The step's loss through the objective's batch (train/objective.py), averaged over the ranks."""
        loss_sum = torch.zeros((), device=self.device)
        for _, x, y in self._micro_batches(batch.inputs, batch.labels):
            loss_sum += self.forward_backward(x, y, batch.normaliser, batch.loss_divisor)
        loss = loss_sum / batch.loss_divisor
        if dist.is_initialized():
            dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        return {"loss": loss}

    def train_step(self) -> dict:
        self.step += 1
        lr = lr_at(self.step, self.job.optimizer.lr, self.job.training.steps, self.job.schedule)
        set_lr(self.optimizer, lr)
        started = time.perf_counter()
        inputs, targets = self.loader.next_batch()
        data_wait_s = time.perf_counter() - started
        if self.token_weights is not None:
            losses = self._weighted_losses(inputs, targets)
        else:
            batch = self.objective.step_batch(inputs, targets, self.loader.last_sample_indices)
            losses = self._objective_loss(batch)
        if self.kfac is not None:
            # Once, after the last micro-batch: factors summed over all of them, the full gradient
            # preconditioned (the seed did it after the first). Clipping then bounds what AdamW receives.
            self.kfac.step(lr)
        params = list(self.model.parameters())
        grad_norm = clip_and_step(self.optimizer, params, self.job.optimizer.grad_clip_norm)
        self.nonfinite.observe(self.step, [grad_norm, *losses.values()])
        self.tokens_seen += self.job.training.global_batch_tokens
        # losses and grad_norm stay on the device: nothing here waits for the GPU, so the host queues the
        # next step while this one runs; they become floats only on the steps that are logged.
        return {**losses, "lr": lr, "grad_norm": grad_norm, "data_wait_s": data_wait_s}

    def _stop_requested(self) -> bool:
        """Whether any rank got a stop signal; agreed over a host (gloo) group: the GPU is not waited on."""
        flag = torch.tensor([1 if self._stop_signal else 0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._host_group)
        return bool(flag.item())

    def describe(self) -> None:
        job, dims = self.job, self.dims
        tokens_per_step = job.training.global_batch_tokens
        log.info(
            "model %s: %.2fM parameters (%.2fM non-embedding), %.3g FLOPs/token (6N + 12·L·d·seq)",
            f"hf {self.model_args.model_type}" if job.model.hf.enabled else job.model.flavor,
            self.model.num_params() / 1e6,
            self.model.num_params(exclude_embeddings=True) / 1e6,
            self.flops_per_token,
        )
        log.info(
            "world %d = dp_replicate %d × dp_shard %d × tp %d on %s; micro-batch %d sequences × seq %d, "
            "gradient accumulation %d; %d tokens/step; segment steps %d → %d of %d; run total %d tokens",
            dims.world_size,
            dims.dp_replicate,
            dims.dp_shard,
            dims.tp,
            self.device.type,
            self.micro_batch_sequences,
            job.data.seq_len,
            self.grad_accum_steps,
            tokens_per_step,
            self.step,
            self.until_step,
            job.training.steps,
            tokens_per_step * job.training.steps,
        )

    def train(self) -> int:
        job = self.job
        self.state_dir.mkdir(parents=True, exist_ok=True)
        writer = metrics_lib.MetricsWriter(
            self.state_dir,
            enabled=self.rank == 0,
            tensorboard=job.metrics.tensorboard,
            tags={"origin": self.checkpointer.origin, "config_sha256": self.checkpointer.config_sha},
            run=job.run,
            config=to_dict(job),
        )
        self.describe()
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while self.step < self.until_step:
                out = self.train_step()
                window_tokens += job.training.global_batch_tokens
                validate = self.validator is not None and self.validator.due(self.step, self.until_step)
                if validate or self.step % job.metrics.log_every_steps == 0 or self.step == self.until_step:
                    floats = {k: float(out[k]) for k in ("loss", "weighted_loss", "grad_norm") if k in out}
                    out = {**out, **floats}  # waits for the device
                    elapsed = time.perf_counter() - window_start
                    self.nonfinite.check(self.step)  # any step since the last check, logged or not
                    speed = metrics_lib.throughput(
                        window_tokens, elapsed, self.dims.world_size, self.flops_per_token, self.peak_flops
                    )
                    memory = metrics_lib.peak_memory_gib(self.device)
                    if validate:  # after the throughput window closed: validation is not training time
                        out = {**out, **self.validator.run(self.validation_loss, self.device)}
                    mixture = self.loader.metrics()  # realised mixture shares
                    row = {"step": self.step, "tokens_seen": self.tokens_seen, **out, **speed}
                    writer.write({**row, "peak_memory_gib": memory, **mixture})
                    window_start, window_tokens = time.perf_counter(), 0
                if self.step == self.until_step:
                    break
                if self._stop_requested():
                    self.save_rolling()
                    self.checkpointer.wait()
                    log.warning("stopping at step %d after a signal; a retry resumes from state/", self.step)
                    return EXIT_PREEMPTED
                if self.step % job.checkpoint.interval_steps == 0:
                    self.save_rolling()
            self.save_final()
            return 0
        finally:
            self.checkpointer.close()  # a rolling checkpoint still being written completes first
            writer.close()
            self.loader.close()


def run_segment(job: JobConfig, resume_from: Path, save_to: Path, until_step: int) -> int:
    trainer = Trainer(job, resume_from, save_to, until_step)
    if trainer.rank == 0:
        trainer.state_dir.mkdir(parents=True, exist_ok=True)
        (trainer.state_dir / "train.resolved.json").write_text(json.dumps(to_dict(job), indent=2) + "\n")
    return trainer.train()
