"""The trainer's job config: dataclasses loaded strictly from a TOML file.

`results/runs/{run}/train.toml` is rendered by the workflow and is the one record of a run. Loading is
strict: an unknown key or a value of the wrong type raises ValueError naming the dotted key and what
would be valid, so a typo never silently falls back to a default. Each component receives only its own
section (`job.model`, `job.optimizer`, …), never the whole JobConfig.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w


@dataclass
class HFModelConfig:
    """A Hugging Face `transformers` causal LM instead of a Llama flavor (set `config` or `model_type`)."""

    config: str = ""
    """A local folder with a transformers `config.json` (as `PretrainedConfig.save_pretrained` writes it)."""
    model_type: str = ""
    """A transformers model type (e.g. gpt_neo, gpt_neox, llama): `AutoConfig.for_model(model_type, ...)`."""
    config_values: dict[str, Any] = field(default_factory=dict)
    """Config attributes set on top (e.g. {hidden_size = 64, num_layers = 2}); vocab_size comes from the
    run's tokenizer."""

    @property
    def enabled(self) -> bool:
        return bool(self.config or self.model_type)


@dataclass
class ModelConfig:
    flavor: str = "debug"
    """Named shape from lmrepro.model.flavors: debug, 250M, 870M, 2B, 5B, 7B, 1B, llama3.2-1B, llama3.1-8B."""
    vocab_size: int = -1
    """Filled from the tokenizer by the workflow; the embedding and output layer have this many rows."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Per-field overrides of the flavor's ModelArgs, e.g. {n_layers = 2, causal = false}."""
    hf: HFModelConfig = field(default_factory=HFModelConfig)
    """A transformers causal LM as the model (flavor and overrides then unused)."""


@dataclass
class SourceConfig:
    """One dataset of the training data (`data.sources`, an array of tables)."""

    name: str = ""
    """Dataset name; metrics report its realised token share as mixture/<name>."""
    weight: float = 1.0
    """Token fraction of this source (any scale >= 0; normalised over the sources, their sum must be > 0)."""
    index: str = ""
    """shards mode: the index file of the source's token shards."""
    files: list[str] = field(default_factory=list)
    """streaming mode: JSONL (.jsonl/.json, optionally .gz/.zst) or Parquet files."""
    text_key: str = "text"
    """streaming mode: the field of a row that holds the document text."""


@dataclass
class StreamingConfig:
    tokenizer: str = ""
    """tokenizer.json that tokenizes documents on the fly (set by the workflow)."""
    shuffle_buffer_documents: int = 10000
    """Documents per shuffle block: a block is read, permuted (seeded by data.seed, source, stream, epoch
    and block) and consumed in that order; a resume re-reads at most one block."""
    streams: int = 0
    """Virtual streams S, fixed for the whole run: each reads its own part of every source and supplies
    global batch / S sequences per step, and data-parallel rank r of dp reads streams [r·S/dp, (r+1)·S/dp).
    A resume is exact on any dp that divides S; S must divide the global batch in sequences. 0 = as saved
    in the checkpoint being resumed, one per data-parallel rank on a fresh start."""


@dataclass
class DataConfig:
    seq_len: int = 128
    """Tokens per training sequence (the model sees seq_len inputs and predicts seq_len targets)."""
    seed: int = 0
    """Seed of the data order; the order is a pure function of (seed, sample index)."""
    mode: Literal["shards", "streaming"] = "shards"
    """shards: pre-tokenized token shards; streaming: raw files read with `datasets`, tokenized on the fly."""
    sources: list[SourceConfig] = field(default_factory=list)
    """The training datasets, named, with their token fractions (one source for a single dataset)."""
    prefetch_batches: int = 2
    """Batches a background thread prepares ahead of the training step; 0 reads in the training thread."""
    pin_memory: bool = True
    """Pin the prepared batches in page-locked memory (only when CUDA is available)."""
    streaming: StreamingConfig = field(default_factory=StreamingConfig)


@dataclass
class KFACOptions:
    """K-FAC preconditioning of every nn.Linear but the output layer (train/kfac.py), as the seed's --kfac."""

    enabled: bool = False
    factor_update_steps: int = 0
    """Update the Kronecker factors every this many steps (required, >= 1, when enabled; as in the seed)."""
    inv_update_steps: int = 0
    """Recompute their eigendecompositions every this many steps (required, >= 1, when enabled)."""
    damping: float = 0.001
    kl_clip: float = 0.001
    factor_decay: float = 0.95
    """Running average: F ← decay·F + (1 − decay)·F_step."""


@dataclass
class OptimizerConfig:
    name: Literal["adamw"] = "adamw"
    lr: float = 3e-3
    """Peak learning rate (after warmup)."""
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    weight_decay_params: Literal["matrices", "all"] = "matrices"
    """Which parameters weight decay applies to: matrices (>= 2-D; norms and biases exempt, as Llama,
    nanoGPT and Hugging Face recipes) or all (the torchtitan forks decay every parameter)."""
    kfac: KFACOptions = field(default_factory=KFACOptions)


@dataclass
class ScheduleConfig:
    warmup_steps: int = 10
    decay: Literal["cosine", "linear", "constant", "wsd"] = "cosine"
    """Shape after warmup: cosine or linear to min_lr_ratio·lr at the last step, constant, or
    warmup-stable-decay (constant, then linear decay over the last decay_fraction of the steps)."""
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2
    """wsd only: the fraction of all steps spent decaying."""
    formula: Literal["lmrepro", "torchtitan", "nanogpt", "neox"] = "lmrepro"
    """How steps map onto warmup and decay: lmrepro's, or a seed's (train/schedule.py), so that the
    learning rate equals the seed's at every step."""


@dataclass
class MLMConfig:
    """Masked language modelling (training.objective = "mlm"; the torchtitan-mlm seed)."""

    mask_ratio: float = 0.3
    """Probability that a maskable token is selected (independently per token); 0 < ratio < 1."""
    mask_token: str | int = "<|reserved_special_token_100|>"
    """The token that replaces selected tokens: a token string of the run's tokenizer or an id."""
    replacement: Literal["all_mask", "80_10_10"] = "all_mask"
    """all_mask: every selected token becomes the mask token (the seed); 80_10_10: mask / random / keep."""
    never_mask_tokens: list[str | int] = field(default_factory=lambda: ["bos", "eos", "pad"])
    """Tokens never selected: token strings or ids; "bos", "eos", "pad" name the tokenizer's own."""
    mask_token_id: int = -1
    """Set by the workflow: the id of mask_token in the run's tokenizer."""
    never_mask_ids: list[int] = field(default_factory=list)
    """Set by the workflow: the ids of never_mask_tokens (those the tokenizer has)."""


@dataclass
class TrainingConfig:
    steps: int = 100
    """Total optimizer steps of the run (all segments together)."""
    global_batch_tokens: int = 4096
    """Tokens per optimizer step over all data-parallel ranks; must be a multiple of seq_len × dp ranks."""
    micro_batch_sequences: int = 0
    """Sequences per forward/backward on one rank; 0 = the whole local batch at once (no accumulation)."""
    seed: int = 0
    """Seed of the model initialisation and of any randomness in training."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype during forward/backward (FSDP mixed precision); master weights stay float32."""
    activation_checkpoint: Literal["none", "full", "selective"] = "none"
    """Recompute activations in backward per block: none, full (the whole block) or selective (keep
    matmul and attention outputs, recompute norms and pointwise ops)."""
    compile: bool = False
    """torch.compile each transformer block (fullgraph)."""
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    """torch.compile mode; max-autotune benchmarks Triton matmul templates against cuBLAS (slower start)."""
    attention_backend: Literal["auto", "flash", "efficient", "cudnn", "math", "flash_attn"] = "auto"
    """SDPA kernel: auto lets PyTorch choose; flash/efficient/cudnn/math force one SDPA backend;
    flash_attn calls the flash-attn package (FA-4 `flash_attn.cute` if installed, else FA-2) on CUDA."""
    float8: Literal["off", "tensorwise", "rowwise"] = "off"
    """torchao float8 training of every Linear but the output layer (CUDA, compute capability >= 8.9)."""
    residual_dtype: Literal["compute", "float32"] = "compute"
    """Without FSDP (one GPU, autocast): the residual stream in the compute dtype (what FSDP's bf16
    parameters give on N GPUs) or in float32 (torchtitan's one-GPU numerics)."""
    objective: Literal["causal", "mlm"] = "causal"
    """causal: next-token loss with causal attention; mlm: masked-token loss, needs model.overrides.causal
    = false (bidirectional attention)."""
    mlm: MLMConfig = field(default_factory=MLMConfig)
    """Masking settings of objective = "mlm" (ignored otherwise)."""
    token_weights: str = ""
    """Per-id weights of the cross-entropy (gpt-neuro): "" none; a file holding a 1-D float tensor of
    length model.vocab_size (torch.save; loaded with weights_only=True); or "inverse_frequency": the
    workflow computes {run_dir}/token_weights.pt from the run's training shards (1 / frequency of each id,
    capped at token_weights_cap). The loss is sum(w[target] · ce) / sum(w[target]) over the global batch."""
    token_weights_cap: float = 10000.0
    """inverse_frequency: the largest weight (ids that never occur get it too)."""
    token_weights_sep: float = -1.0
    """inverse_frequency: the weight of a spike tokenizer's SEP id; -1 = its inverse frequency, capped (the
    seed's table, where the cap hits SEP); 0 leaves the deterministic SEP out of the loss."""


@dataclass
class ParallelConfig:
    dp_shard_degree: int = -1
    """FSDP shard degree; -1 = all ranks not used by other degrees."""
    dp_replicate_degree: int = 1
    """HSDP replicate degree (replicate × shard mesh)."""
    tp_degree: int = 1
    """Tensor-parallel degree (with sequence parallel); must divide n_heads, n_kv_heads and ffn_dim."""
    loss_parallel: bool = True
    """With TP: compute the cross-entropy on vocabulary-sharded logits instead of gathering them."""
    fsdp_reshard_after_forward: bool = True
    """Free gathered parameters after forward (ZeRO-3); false keeps them until backward (ZeRO-2-like)."""


@dataclass
class CheckpointConfig:
    interval_steps: int = 25
    """Save a rolling checkpoint into state/ every this many steps (and at SIGTERM/SIGUSR1)."""
    keep_latest_k: int = 2
    """Rolling checkpoints kept in state/; older ones are deleted once a newer one is complete."""
    async_save: bool = False
    """Write rolling checkpoints in a background thread (DCP async_save from pinned CPU copies); the loop
    waits only for the copy. The segment's final checkpoint is always written synchronously."""


@dataclass
class MetricsConfig:
    log_every_steps: int = 10
    tensorboard: bool = True


@dataclass
class ValidationConfig:
    """In-loop validation: the held-out loss inside the training job (runs.<run>.validation sets it)."""

    every_steps: int = 0
    """Held-out loss every this many steps (and at the segment's last step); 0 = no in-loop validation."""
    name: str = ""
    """The loss eval whose split is scored; its metric is logged as val_loss."""
    index: str = ""
    """The index file of the split's token shards."""
    max_tokens: int = 32768
    """Target tokens scored per validation, in windows spread evenly over the split."""


@dataclass
class JobConfig:
    run: str = "run"
    """Name of the run (results/runs/{run})."""
    run_dir: str = ""
    """results/runs/{run}: state/ and checkpoints/ live below it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    """Return value if it fits annotation (ints are accepted for floats), else raise naming key."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ValueError(f"{key} = {value!r} is not valid; expected one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_value(value, option, key)
            except ValueError:
                continue
        raise ValueError(f"{key} = {value!r} has the wrong type; expected {annotation}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a table, got {type(value).__name__}")
        return dict(value)
    if annotation is type(None):
        if value is not None:
            raise ValueError(f"{key} must be null")
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ValueError(f"{key} = {value!r} has the wrong type; expected int")
    if not isinstance(value, annotation):
        raise ValueError(f"{key} = {value!r} has the wrong type; expected {annotation.__name__}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a (nested) dict, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key {prefix}{unknown[0]}; valid keys here: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            kwargs[name] = from_dict(annotation, value, f"{prefix}{name}.")
        elif typing.get_origin(annotation) is list:
            kwargs[name] = _check_list(value, typing.get_args(annotation)[0], f"{prefix}{name}")
        else:
            kwargs[name] = _check_value(value, annotation, f"{prefix}{name}")
    return cls(**kwargs)


def _check_list(value: Any, item: Any, key: str) -> list:
    """A list whose items are checked one by one (tables become dataclasses), errors naming key[i]."""
    if not isinstance(value, list):
        raise ValueError(f"{key} must be an array, got {type(value).__name__}")
    if dataclasses.is_dataclass(item):
        return [from_dict(item, v, f"{key}[{i}].") for i, v in enumerate(value)]
    return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]


def validate(job: JobConfig) -> None:
    """Value checks a type cannot express; raise ValueError naming the key."""
    positive = {
        "data.seq_len": job.data.seq_len,
        "training.steps": job.training.steps,
        "training.global_batch_tokens": job.training.global_batch_tokens,
        "checkpoint.interval_steps": job.checkpoint.interval_steps,
        "checkpoint.keep_latest_k": job.checkpoint.keep_latest_k,
        "metrics.log_every_steps": job.metrics.log_every_steps,
        "optimizer.lr": job.optimizer.lr,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ValueError(f"{key} must be > 0, got {value}")
    non_negative = {
        "optimizer.weight_decay": job.optimizer.weight_decay,
        "optimizer.grad_clip_norm": job.optimizer.grad_clip_norm,
        "schedule.warmup_steps": job.schedule.warmup_steps,
        "training.micro_batch_sequences": job.training.micro_batch_sequences,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ValueError(f"{key} must be >= 0, got {value}")
    if not 0.0 <= job.schedule.min_lr_ratio <= 1.0:
        raise ValueError(f"schedule.min_lr_ratio must be in [0, 1], got {job.schedule.min_lr_ratio}")
    if not 0.0 < job.schedule.decay_fraction <= 1.0:
        raise ValueError(f"schedule.decay_fraction must be in (0, 1], got {job.schedule.decay_fraction}")
    _validate_token_weights(job)
    if job.training.global_batch_tokens % job.data.seq_len:
        raise ValueError(
            f"training.global_batch_tokens = {job.training.global_batch_tokens} is not a multiple of "
            f"data.seq_len = {job.data.seq_len}"
        )
    _validate_data(job.data, job.training.global_batch_tokens // job.data.seq_len)
    check_objective(job.training.objective, job.model.overrides.get("causal", True), job.training.mlm)
    _validate_hf_model(job)
    _validate_kfac(job)


def check_objective(objective: str, causal: Any, mlm: MLMConfig) -> None:
    """training.objective against the attention (model.overrides.causal) and the MLM settings.

    A bidirectional model under the shifted next-token loss sees its targets (the loss collapses), and
    an MLM with causal attention cannot see the context right of a mask: both are refused.
    """
    if objective == "causal" and causal is False:
        raise ValueError(
            "model.overrides.causal = false (bidirectional attention) needs training.objective = 'mlm'; "
            "with the next-token loss the model would see its targets"
        )
    if objective == "mlm" and causal is not False:
        raise ValueError(
            "training.objective = 'mlm' needs model.overrides.causal = false (bidirectional attention)"
        )
    if objective != "mlm":
        return
    r = mlm.mask_ratio
    if not (0.0 < r < 1.0):  # NaN fails too
        raise ValueError(f"training.mlm.mask_ratio must be a number with 0 < ratio < 1, got {r!r}")
    if isinstance(mlm.mask_token, str) and not mlm.mask_token:
        raise ValueError("training.mlm.mask_token must be a token string or an id, got ''")


def _validate_kfac(job: JobConfig) -> None:
    """K-FAC's intervals are required (as the seed's); layouts its hooks cannot serve are refused."""
    kfac = job.optimizer.kfac
    if not kfac.enabled:
        return
    for key in ("factor_update_steps", "inv_update_steps"):
        if getattr(kfac, key) < 1:
            raise ValueError(f"optimizer.kfac.{key} must be set (>= 1) when optimizer.kfac.enabled = true")
    if not 0.0 <= kfac.factor_decay < 1.0:
        raise ValueError(f"optimizer.kfac.factor_decay must be in [0, 1), got {kfac.factor_decay}")
    if kfac.damping < 0 or kfac.kl_clip <= 0:
        raise ValueError("optimizer.kfac.damping must be >= 0 and optimizer.kfac.kl_clip > 0")
    refused = {
        "parallel.tp_degree": (job.parallel.tp_degree != 1, "1 (tensor-parallel Linear weights are sharded)"),
        "training.activation_checkpoint": (
            job.training.activation_checkpoint != "none",
            "none (the recomputed forward would run K-FAC's hooks again)",
        ),
        "training.compile": (job.training.compile, "false (K-FAC's module hooks are not compiled)"),
    }
    refused["training.objective"] = (
        job.training.objective != "causal",
        "'causal' (its factors assume the mean loss over rows, not over masked tokens)",
    )
    for key, (bad, valid) in refused.items():
        if bad:
            raise ValueError(f"optimizer.kfac.enabled = true needs {key} = {valid}")


def _validate_hf_model(job: JobConfig) -> None:
    """A transformers model names one config source; Llama-only knobs are refused rather than ignored."""
    hf = job.model.hf
    if hf.config and hf.model_type:
        raise ValueError("model.hf: set one of config (a local folder) or model_type, not both")
    if not hf.enabled:
        if hf.config_values:
            raise ValueError("model.hf.config_values needs model.hf.config or model.hf.model_type")
        return
    if job.model.overrides:
        raise ValueError("model.overrides shape a Llama flavor; with model.hf use model.hf.config_values")
    if job.parallel.tp_degree != 1:
        raise ValueError(
            f"parallel.tp_degree = {job.parallel.tp_degree}: tensor parallel is only for the Llama model; "
            "with model.hf use 1 (FSDP over data-parallel ranks works)"
        )
    for key, value, default in (
        ("training.float8", job.training.float8, "off"),
        ("training.residual_dtype", job.training.residual_dtype, "compute"),
        ("training.objective", job.training.objective, "causal"),
    ):
        if value != default:
            raise ValueError(f"{key} = {value!r} is for the Llama model; with model.hf keep {default!r}")
    if job.training.attention_backend == "flash_attn":
        raise ValueError(
            "training.attention_backend = 'flash_attn' is for the Llama model; with model.hf use an SDPA "
            "backend (auto, flash, efficient, cudnn, math)"
        )


INVERSE_FREQUENCY = "inverse_frequency"


def _validate_token_weights(job: JobConfig) -> None:
    t = job.training
    if t.token_weights and t.objective != "causal":
        raise ValueError(
            "training.token_weights weights the next-token loss; with training.objective = "
            f"{t.objective!r} leave it empty"
        )
    if t.token_weights and job.optimizer.kfac.enabled:
        raise ValueError(
            "training.token_weights with optimizer.kfac.enabled = true: K-FAC's factors assume the "
            "unweighted mean loss; use one of the two"
        )
    if t.token_weights and job.model.hf.enabled:
        raise ValueError("training.token_weights is for the Llama model; with model.hf leave it empty")
    if t.token_weights and job.parallel.tp_degree > 1:
        raise ValueError(
            "training.token_weights is not supported with parallel.tp_degree > 1 (the vocabulary-sharded "
            "loss has no per-token weights yet); use data parallelism (FSDP/HSDP)"
        )
    if t.token_weights_cap <= 0:
        raise ValueError(f"training.token_weights_cap must be > 0, got {t.token_weights_cap}")
    if t.token_weights_sep < 0 and t.token_weights_sep != -1:
        raise ValueError(
            f"training.token_weights_sep must be -1 (inverse frequency) or >= 0, got {t.token_weights_sep}"
        )
    defaults = TrainingConfig()
    if t.token_weights != INVERSE_FREQUENCY:
        for key in ("token_weights_cap", "token_weights_sep"):
            if getattr(t, key) != getattr(defaults, key):
                raise ValueError(
                    f"training.{key} applies to training.token_weights = {INVERSE_FREQUENCY!r} only"
                )


def token_weights_file(job: JobConfig) -> Path | None:
    """The weights file a run trains with: its own, the workflow's inverse-frequency table, or none."""
    if not job.training.token_weights:
        return None
    if job.training.token_weights == INVERSE_FREQUENCY:
        return Path(job.run_dir) / "token_weights.pt"
    return Path(job.training.token_weights)


def _validate_data(data: DataConfig, global_batch_sequences: int) -> None:
    """The data section: named sources, valid mixture weights, the mode's inputs."""
    if data.prefetch_batches < 0:
        raise ValueError(f"data.prefetch_batches must be >= 0, got {data.prefetch_batches}")
    if data.streaming.shuffle_buffer_documents < 1:
        buffer = data.streaming.shuffle_buffer_documents
        raise ValueError(f"data.streaming.shuffle_buffer_documents must be >= 1, got {buffer}")
    check_streams(data.streaming.streams, global_batch_sequences)
    names = [s.name for s in data.sources]
    if not all(names) or len(set(names)) != len(names):
        raise ValueError(f"data.sources[].name must be distinct and non-empty, got {names}")
    if data.sources:  # empty in a preset: the workflow fills in the run's datasets
        check_weights({s.name: s.weight for s in data.sources}, "data.sources")
    needed = "files" if data.mode == "streaming" else "index"
    if data.mode == "streaming" and not data.sources:
        raise ValueError("data.mode = 'streaming' reads data.sources[].files; data.sources is empty")
    for i, source in enumerate(data.sources):
        if not getattr(source, needed):
            raise ValueError(f"data.sources[{i}] ({source.name}): data.mode = {data.mode!r} needs {needed}")


def check_weights(weights: Mapping[str, float], where: str) -> dict[str, float]:
    """Validate mixture weights (token fractions, any positive scale); return them normalised to sum 1.

    `where` names the config location in errors, e.g. "runs.mix.mixture" or "data.sources".
    """
    if not weights:
        raise ValueError(f"{where}: a mixture needs at least one dataset")
    for name, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"{where}.{name}: weight {weight!r} is not a number")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{where}.{name}: weight {weight} must be a finite number >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError(f"{where}: the weights of {sorted(weights)} sum to {total}; one must be > 0")
    return {name: float(weight) / total for name, weight in weights.items()}


def check_streams(
    streams: int, global_batch_sequences: int, dp_size: int | None = None, *, saved: bool = False
) -> None:
    """data.streaming.streams S against the global batch G (S divides G) and, once known, the data-parallel
    size dp (dp divides S); 0 is resolved later. `saved`: S comes from the checkpoint being resumed."""
    key = f"data.streaming.streams = {streams}" + (" (as saved in the checkpoint)" if saved else "")
    if streams < 0:
        raise ValueError(f"{key} must be >= 0 (0: as saved, one per data-parallel rank on a fresh start)")
    if streams == 0:
        return
    if global_batch_sequences % streams:
        raise ValueError(
            f"{key} does not divide the global batch of {global_batch_sequences} sequences; valid: 0 or a "
            f"divisor of {global_batch_sequences}: {_alternatives(_divisors(global_batch_sequences))}"
        )
    if dp_size is not None and streams % dp_size:
        raise ValueError(
            f"{key} does not split over {dp_size} data-parallel ranks: run or resume on a data-parallel "
            f"size that divides {streams}: {_alternatives(_divisors(streams))}; to change to {dp_size} "
            f"ranks later, start the run with data.streaming.streams a multiple of {dp_size}"
        )


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _alternatives(values: list[int]) -> str:
    """1 → "1"; [1, 2, 4] → "1, 2 or 4"."""
    *head, last = [str(v) for v in values]
    return f"{', '.join(head)} or {last}" if head else last


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    with path.open("rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from e


def load_job_config(path: str | Path) -> JobConfig:
    """Load and validate a train.toml (FileNotFoundError / ValueError name the file and key)."""
    path = Path(path)
    data = _read_toml(path, "trainer config")
    try:
        job = from_dict(JobConfig, data)
        validate(job)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return job


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge overrides into a copy of base (tables merge, other values replace)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "overrides":
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def to_dict(job: JobConfig) -> dict[str, Any]:
    return dataclasses.asdict(job)


def dump_toml(job: JobConfig) -> str:
    return tomli_w.dumps(to_dict(job))


def config_sha256(job: JobConfig) -> str:
    """Fingerprint of everything that determines the run's trajectory (used to refuse stale state)."""
    return hashlib.sha256(dump_toml(job).encode()).hexdigest()


def _reject_fixed_keys(overrides: dict[str, Any], fixed: dict[str, Any], prefix: str = "") -> None:
    """A key the workflow sets itself (paths, vocab size, steps) would be silently ignored: refuse it."""
    for key, value in overrides.items():
        if key not in fixed:
            continue
        if isinstance(value, dict) and isinstance(fixed[key], dict):
            _reject_fixed_keys(value, fixed[key], f"{prefix}{key}.")
        else:
            raise ValueError(f"{prefix}{key} is set by the workflow, not by a run's overrides")


def render_job_config(preset: str | Path, overrides: dict[str, Any], fixed: dict[str, Any]) -> JobConfig:
    """A run's JobConfig: trainer preset TOML < run overrides < values the workflow fixes (paths, vocab).

    Raises ValueError naming the offending key (of the preset or the overrides) before anything runs.
    """
    preset = Path(preset)
    base = _read_toml(preset, "trainer preset")
    try:
        from_dict(JobConfig, base)
    except ValueError as e:
        raise ValueError(f"{preset}: {e}") from None
    try:
        from_dict(JobConfig, overrides)
        _reject_fixed_keys(overrides, fixed)
    except ValueError as e:
        raise ValueError(f"overrides: {e}") from None
    job = from_dict(JobConfig, merge(merge(base, overrides), fixed))
    validate(job)
    return job
