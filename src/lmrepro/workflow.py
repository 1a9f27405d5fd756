"""The workflow's side of lmrepro: the parse-time config checks (bad config stops before any job starts),
segment boundaries, and the one home of result paths under results/."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

from lmrepro.config import check_weights, render_job_config
from lmrepro.data.peek import peek_data_file
from lmrepro.data.readers import file_format
from lmrepro.data.shards import INDEX_FILE
from lmrepro.data.sources import local_input_paths, select_local_files
from lmrepro.data.synthetic_formats import LAYOUT_SPLITS
from lmrepro.data.synthetic_wikitext import SPLITS as WIKITEXT_SPLITS
from lmrepro.hub import cached_snapshot, parse_time_snapshot
from lmrepro.run_layout import run_layout


def segment_boundaries(steps: int, segment_steps: int) -> list[int]:
    """Segment end steps of a run: K, 2K, … and the last step (ceil(S / K) segments)."""
    if steps < 1 or segment_steps < 1:
        raise ValueError(f"steps ({steps}) and segment_steps ({segment_steps}) must be >= 1")
    ends = list(range(segment_steps, steps, segment_steps))
    return ends + [steps]


def eval_steps(spec: dict) -> list[int]:
    """Checkpoints of a run that are exported and evaluated, chosen independently of how it is cut into
    segments: step 0 and every ``eval_every_segments``-th segment end (1 when neither key is set), the
    steps of ``eval_at_steps`` (0 or segment ends), and always the last step."""
    boundaries = segment_boundaries(spec["steps"], spec["segment_steps"])
    every, at = spec.get("eval_every_segments"), spec.get("eval_at_steps")
    if every is None and at is None:
        every = 1
    chosen = set(at or [])
    if every is not None:
        chosen |= {0, *boundaries[every - 1 :: every]}
    return sorted(chosen | {spec["steps"]})


def _check_eval_cadence(run: str, spec: dict) -> None:
    """runs.<run>.eval_at_steps names step 0 or segment ends only (checkpoints exist only there)."""
    boundaries = segment_boundaries(spec["steps"], spec["segment_steps"])
    for step in spec.get("eval_at_steps", []):
        if step != 0 and step not in boundaries:
            shown = boundaries if len(boundaries) <= 12 else [*boundaries[:6], "...", *boundaries[-3:]]
            raise ValueError(
                f"runs.{run}.eval_at_steps: {step} is not a segment boundary; valid: 0 and the segment ends "
                f"{shown} (multiples of segment_steps = {spec['segment_steps']}, and steps = {spec['steps']})"
            )


def optimizer_dropped_steps(spec: dict) -> list[int]:
    """Segment ends whose checkpoints become model-only (lmrepro.checkpoint.retention): every one but the
    last ``keep_optimizer_last_k``, each once the segment k later is complete and its readers are done."""
    boundaries = segment_boundaries(spec["steps"], spec["segment_steps"])
    return boundaries[: max(len(boundaries) - spec.get("keep_optimizer_last_k", 1), 0)]


def optimizer_needed_until(spec: dict, step: int) -> int:
    """The segment end after which checkpoint ``step`` no longer needs its optimizer state (k segments on)."""
    boundaries = segment_boundaries(spec["steps"], spec["segment_steps"])
    return boundaries[boundaries.index(step) + spec.get("keep_optimizer_last_k", 1)]


def previous_segment_end(run: str, spec: dict, step: int) -> int:
    """The step a segment ending at `step` starts from (0 for the first)."""
    boundaries = segment_boundaries(spec["steps"], spec["segment_steps"])
    if step not in boundaries:
        raise ValueError(f"runs.{run}: step {step} is not a segment end; valid steps: {boundaries}")
    index = boundaries.index(step)
    return boundaries[index - 1] if index else 0


def _require(mapping: dict, name: str, where: str, what: str) -> None:
    if name not in mapping:
        raise ValueError(f"{where} = {name!r} is not a configured {what}; valid: {sorted(mapping)}")


def check_config(config: dict[str, Any], root: str | Path = ".", declared_train: dict | None = None) -> None:
    """Cross-reference checks the JSON schema cannot express, every run's trainer config rendered and its
    layout planned for its world size (its `layout`, or what the profile declares for train_segment in
    `declared_train`: train_procs_per_node, nodes). Raises naming the config key or file."""
    root = Path(root)
    datasets, tokenizers = config["datasets"], config["tokenizers"]
    evals = config.get("evals", {})
    for name, spec in datasets.items():
        local_input_paths(spec, root, name=name)  # every local pattern finds a file
        _check_local_files(name, spec, root, _multiple_choice_splits(name, evals))
        _check_packing(name, spec)
    for name, spec in tokenizers.items():
        if spec["kind"] == "spike_bytes":
            continue
        if "dataset" in spec:
            _require(datasets, spec["dataset"], f"tokenizers.{name}.dataset", "dataset")
            kind = dataset_kind(datasets[spec["dataset"]])
            if kind != tokenizer_reads(spec):
                raise ValueError(
                    f"tokenizers.{name}.dataset: {spec['dataset']!r} holds {kind} rows, but a {spec['kind']} "
                    f"tokenizer learns from {tokenizer_reads(spec)}"
                )
        elif "repo" in spec:
            parse_time_snapshot(f"tokenizers.{name}", "tokenizers", spec)  # offline and not cached: stop
        elif not (root / spec["path"]).exists():
            raise FileNotFoundError(f"tokenizers.{name}.path: {spec['path']} does not exist")
        else:
            _check_tokenizer_file(name, spec, root)
    lm_eval_evals = {name: spec for name, spec in evals.items() if spec["kind"] == "lm_eval"}
    if lm_eval_evals and any(set(r.get("evals", [])) & set(lm_eval_evals) for r in config["runs"].values()):
        check_lm_eval_evals(lm_eval_evals)
    for name, spec in evals.items():
        if spec["kind"] == "lm_eval":
            continue
        _require(datasets, spec["dataset"], f"evals.{name}.dataset", "dataset")
        source = datasets[spec["dataset"]]
        wanted = spec.get("split") or Path(spec["file"]).stem
        if source["source"] == "hub" and spec["kind"] == "multiple_choice":
            raise ValueError(
                f"evals.{name}: multiple_choice reads a JSONL file of a local or synthetic dataset"
            )
        splits = source.get("files") or source.get("splits") or {}
        if source["source"] in ("local", "hub") and wanted not in splits:
            raise ValueError(
                f"evals.{name}: dataset {spec['dataset']!r} has no split {wanted!r}; valid: {sorted(splits)}"
            )
        if dataset_kind(source) == "spikes" and spec["kind"] == "multiple_choice":
            raise ValueError(
                f"evals.{name}: a spike dataset ({spec['dataset']!r}) is evaluated by kind loss or ngram"
            )
        spikes = dataset_kind(source) == "spikes"
        synthetic_splits = ("train", "test") if spikes else ("train", "heldout", "mc")
        synthetic_splits = LAYOUT_SPLITS.get(source.get("layout", "corpus"), synthetic_splits)
        if source.get("layout") == "wikitext":
            synthetic_splits = WIKITEXT_SPLITS
        if source["source"] == "synthetic" and wanted not in synthetic_splits:
            named = ", ".join(synthetic_splits[:-1]) + f" and {synthetic_splits[-1]}"
            raise ValueError(
                f"evals.{name}: synthetic {'spike ' if spikes else ''}datasets have {named}, not {wanted!r}"
            )
    bases = config.get("bases", {})
    base_args = {name: _check_base(name, spec, root) for name, spec in bases.items()}
    check_init_chains(config["runs"])
    jobs: dict[str, Any] = {}
    for run, spec in config["runs"].items():
        where = f"runs.{run}"
        _check_run_data(run, spec, datasets)
        _require(tokenizers, spec["tokenizer"], f"{where}.tokenizer", "tokenizer")
        for task in spec.get("evals", []):
            _require(evals, task, f"{where}.evals[]", "eval")
        _check_run_kinds(run, spec, config)
        _check_run_packing(run, spec, config, root)
        weights = run_token_weights(run, spec, root)
        if weights and weights != token_weights_path(run) and not (root / weights).is_file():
            raise FileNotFoundError(f"{where}.overrides.training.token_weights: {weights} does not exist")
        if spec["segment_steps"] > spec["steps"]:
            raise ValueError(
                f"{where}.segment_steps = {spec['segment_steps']} exceeds {where}.steps = {spec['steps']}"
            )
        _check_eval_cadence(run, spec)
        resolved = with_validation(spec, evals, run)
        try:
            fixed = run_fixed_values(run, resolved, root=root)
            job = render_job_config(root / spec["preset"], spec.get("overrides", {}), fixed)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{where}: {e}") from None
        _check_run_steps(run, spec, job)
        jobs[run] = job
        if "validation" in spec:
            _check_validation(run, job)
        if job.training.objective == "mlm":
            _check_mlm_run(run, spec, job, config, root)
        if "text_samples" in spec and (
            job.training.objective != "causal" or tokenizer_reads(tokenizers[spec["tokenizer"]]) == "spikes"
        ):
            raise ValueError(
                f"{where}.text_samples: text samples continue prompts with a causal text model's export; "
                "remove text_samples from a masked-LM or spike run (spike runs: runs.<run>.samples)"
            )
        if job.model.hf.enabled:
            _check_hf_model(run, spec, job, root)
        check_run_layout(run, spec, job, root, declared_train)
        if "init" in spec and init_run(spec) is None:
            _require(bases, spec["init"], f"{where}.init", "base")
            transformers_base = bases[spec["init"]]["format"] == "transformers"
            if transformers_base != job.model.hf.enabled:
                raise ValueError(
                    f"{where}.init: base {spec['init']} is of format {bases[spec['init']]['format']}; "
                    + (
                        "a Llama run starts from an hf or meta base"
                        if transformers_base
                        else "a model.hf run starts from a base of format transformers"
                    )
                )
            if transformers_base:
                _check_run_transformers_base(run, spec, job, config, root)
            elif base_args[spec["init"]] is not None:
                _check_run_base(run, spec, job, config, base_args[spec["init"]])
    for run in config["runs"]:
        if (chain := init_run_step(config["runs"], run)) is not None:
            check_same_model(run, jobs[run], chain[0], jobs[chain[0]], config["runs"])


def _check_run_steps(run: str, spec: dict, job: Any) -> None:
    """Step counts that only make sense within the run's steps."""
    where, steps = f"runs.{run}", spec["steps"]
    if job.schedule.warmup_steps > steps:
        raise ValueError(
            f"{where}: schedule.warmup_steps = {job.schedule.warmup_steps} exceeds {where}.steps = {steps}: "
            f"the learning rate would never reach its peak; use at most {steps}"
        )
    if job.validation.every_steps > steps:
        raise ValueError(
            f"{where}.validation.every_steps = {job.validation.every_steps} exceeds {where}.steps = {steps}; "
            f"use at most {steps}"
        )


def check_run_layout(
    run: str, spec: dict, job: Any, root: str | Path = ".", declared_train: dict | None = None
) -> tuple[Any, Any]:
    """The model shape, then the parallel degrees and the batch arithmetic for the run's world size, by the
    trainer's own checked_model_args / plan_layout (torch is imported only for a model.hf run); returns
    (RunLayout, the trainer's planned Layout). The world size is the run's layout (nodes × processes per
    node) unless the profile or --set-resources declare train_segment's train_procs_per_node / nodes
    (``declared_train``; ``{"evaluated_by_job": True}`` when one is an expression only a job evaluates: the
    model shape is checked, the layout left to the job)."""
    from lmrepro.train.layout import checked_model_args, plan_layout

    hf = job.model.hf
    if hf.config:  # a folder relative to the workflow's directory, as the job will read it
        hf = dataclasses.replace(hf, config=str(Path(root) / hf.config))
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, hf=hf))
    try:
        checked_model_args(job)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"runs.{run}: {e}") from None
    layout = run_layout(spec, run)
    if (declared_train or {}).get("evaluated_by_job"):  # e.g. processes by attempt: the job plans them
        return layout, None
    declared = {key: value for key, value in (declared_train or {}).items() if value}
    processes = declared.get("train_procs_per_node", layout.processes_per_node)
    nodes = declared.get("nodes", layout.nodes)
    try:
        return layout, plan_layout(job, processes * nodes)
    except (ValueError, FileNotFoundError) as e:
        if declared:
            raise type(e)(
                f"runs.{run}: {e} (world size {processes * nodes} = train_procs_per_node × nodes of "
                "train_segment, as the profile or --set-resources declare them)"
            ) from None
        raise type(e)(
            f"runs.{run}.layout ({layout.nodes} nodes × {layout.processes_per_node} processes = "
            f"{layout.world_size} ranks): {e}"
        ) from None


def check_lm_eval_evals(evals: dict[str, dict]) -> None:
    """lm_eval evals name tasks the installed lm-eval knows, whose data is in the offline datasets cache
    (lm-eval's task index is built once, ~15 s on 2 cores: only when a run asks for such an eval)."""
    from lmrepro.eval.harness import _offline
    from lmrepro.eval.lm_eval_tasks import _task_manager, check_task_names, check_tasks_cached

    with _offline():
        task_manager = _task_manager(None)
        for name, spec in evals.items():
            try:
                check_task_names([spec["task"]], task_manager)
                check_tasks_cached([spec["task"]], task_manager)
            except ValueError as e:
                raise ValueError(
                    f"evals.{name}.task = {spec['task']!r}: {' '.join(str(e).split())}"
                ) from None


def _check_hf_model(run: str, spec: dict, job: Any, root: Path) -> None:
    """A transformers model exists as named and is a causal LM (transformers is imported only here)."""
    from lmrepro.model.hf_causal import hf_causal_args

    hf = job.model.hf
    try:
        args = hf_causal_args(hf.config, hf.model_type, hf.config_values, vocab_size=-1, root=root)
        if job.optimizer.kfac.enabled:  # K-FAC's layer check on a meta-device build (GPT-2's Conv1D)
            _check_kfac_layers(args)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"runs.{run}: {e}") from None


def _check_kfac_layers(args: Any) -> None:
    import torch

    from lmrepro.model.build import build_model, output_layer_name
    from lmrepro.train.kfac import KFAC, KFACConfig

    with torch.device("meta"):
        model = build_model(args)
    try:
        KFAC(model, KFACConfig(skip_modules=(output_layer_name(model),))).remove()
    except ValueError as e:
        raise ValueError(f"optimizer.kfac.enabled = true: {e}") from None


def run_fixed_values(
    run: str,
    spec: dict,
    vocab_size: int = 1 << 16,
    *,
    data: dict[str, dict] | None = None,
    root: str | Path = ".",
    mlm_ids: dict | None = None,
) -> dict:
    """Trainer keys the workflow sets itself from config.yaml and the produced files.

    training.mlm.mask_token_id / never_mask_ids: `mlm_ids` (lmrepro.data.masking.mlm_token_ids of the run's
    tokenizer); absent, the dataclass defaults (-1, []), which an MLM trainer refuses.

    data.sources: one table per training dataset, named as in config.yaml, with its weight and `data[name]`
    ({"index": …} in shards mode, {"files": […], "text_key": …} in streaming mode; from the render step,
    conventional paths stand in at parse time).
    """
    mode = run_data_mode(spec, root)
    datasets = run_datasets(spec)
    if data is None:
        data = {name: _conventional_source(name, spec["tokenizer"], mode) for name in datasets}
    fixed_data: dict[str, Any] = {
        "sources": [{"name": n, "weight": w, **data[n]} for n, w in datasets.items()]
    }
    if mode == "streaming":
        fixed_data["streaming"] = {"tokenizer": tokenizer_dir(spec["tokenizer"])}
    fixed = {
        "run": run,
        "run_dir": run_dir(run),
        "model": {"vocab_size": vocab_size},
        "data": fixed_data,
        "training": {"steps": spec["steps"], "mlm": mlm_ids or {"mask_token_id": -1, "never_mask_ids": []}},
    }
    if "validation" in spec:  # resolved by with_validation
        v = spec["validation"]
        index = f"{shards_dir(v['dataset'], spec['tokenizer'], v['split'])}/{INDEX_FILE}"
        fixed["validation"] = {
            "every_steps": v["every_steps"],
            "name": v["eval"],
            "index": index,
            "max_tokens": v["max_tokens"],
        }
    return fixed


# ---------------------------------------------------------------------------------- in-loop validation


def with_validation(spec: dict, evals: dict[str, dict], run: str = "<run>") -> dict:
    """The run's spec with ``validation`` resolved: its loss eval's dataset, split and max_tokens added."""
    if "validation" not in spec:
        return spec
    v = spec["validation"]
    where = f"runs.{run}.validation"
    _require(evals, v["eval"], f"{where}.eval", "eval")
    task = evals[v["eval"]]
    if task["kind"] != "loss":
        raise ValueError(
            f"{where}.eval = {v['eval']!r} is a {task['kind']} eval; in-loop validation scores a loss eval"
        )
    split, max_tokens = task.get("split"), task.get("max_tokens", 32768)
    resolved = {**v, "dataset": task["dataset"], "split": split, "max_tokens": max_tokens}
    return {**spec, "validation": resolved}


def _check_validation(run: str, job: Any) -> None:
    """What the rendered trainer config says about in-loop validation (the eval itself: with_validation)."""
    where = f"runs.{run}.validation"
    if job.training.objective != "causal":
        raise ValueError(
            f"{where}: in-loop validation scores the next-token loss; an MLM run "
            "(training.objective = 'mlm') is evaluated by its loss evals instead"
        )
    if job.data.mode != "shards":
        raise ValueError(f"{where}: in-loop validation reads token shards; data.mode = {job.data.mode!r}")


# ------------------------------------------------------------------------------ masked language model


def _check_mlm_run(run: str, spec: dict, job: Any, config: dict[str, Any], root: Path) -> None:
    """An MLM run: its mask tokens are in the tokenizer, and it asks for no causal-only evaluation."""
    for task in spec.get("evals", []):
        if config["evals"][task]["kind"] != "loss":
            raise ValueError(
                f"runs.{run}.evals: {task} is a {config['evals'][task]['kind']} eval (lm-eval scores "
                "next-token likelihoods, causal models only); training.objective = 'mlm' runs take loss "
                "evals (masked-token loss and accuracy)"
            )
    try:
        parse_time_mlm_ids(job.training.mlm, config["tokenizers"][spec["tokenizer"]], root)
    except ValueError as e:
        raise ValueError(f"runs.{run}: {e}") from None


def parse_time_mlm_ids(mlm: Any, tokenizer: dict, root: str | Path = ".") -> dict:
    """training.mlm's token ids from a tokenizer's config entry, before any job: a tokenizer the workflow
    trains (bpe) has only its special tokens known yet; the others are read from their files."""
    from lmrepro.data.masking import mlm_token_ids
    from lmrepro.data.tokenizer import BPE_SPECIAL_TOKENS, load_tokenizer

    if tokenizer["kind"] == "bpe":
        ids = {token: i for i, token in enumerate(BPE_SPECIAL_TOKENS)}
        specials = dict(zip(("bos", "eos", "pad"), range(3), strict=True))
        return mlm_token_ids(
            mlm.mask_token,
            mlm.never_mask_tokens,
            ids.get,
            vocab_size=tokenizer["vocab_size"],
            specials=specials,
        )
    source = parse_time_tokenizer_path(tokenizer, root)
    if source is None:  # a Hub tokenizer not cached yet: the render checks again with the fetched files
        return {"mask_token_id": -1, "never_mask_ids": []}
    return tokenizer_mlm_ids(mlm, load_tokenizer(source))


def tokenizer_mlm_ids(mlm: Any, tok: Any) -> dict:
    """training.mlm's token ids in a loaded tokenizer (lmrepro.data.tokenizer.TextTokenizer)."""
    from lmrepro.data.masking import mlm_token_ids

    specials = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
    return mlm_token_ids(
        mlm.mask_token, mlm.never_mask_tokens, tok.token_to_id, vocab_size=tok.vocab_size, specials=specials
    )


# ------------------------------------------------------------------------------- base checkpoints
# torch is imported only when bases are configured: parsing the default config stays fast.


def _check_base(name: str, spec: dict, root: Path) -> Any:
    """The base's folder exists and its config file describes a Llama (a transformers causal LM for format
    `transformers`); returns its ModelArgs (HFCausalArgs). A stand-in's architecture comes from its config
    entry; a Hub base is read from the cache, or None when it is not cached yet (offline: an error naming the
    repo and the command that caches it)."""
    from lmrepro.checkpoint.convert import read_base_args
    from lmrepro.checkpoint.standin_base import standin_args
    from lmrepro.model.hf_causal import hf_causal_args

    source = spec.get("source", "local")
    if source != "local" and spec["format"] == "transformers":
        raise ValueError(f"bases.{name}.source = {source}: a transformers base is a local folder (path)")
    if source == "synthetic":
        try:
            return standin_args(spec)
        except ValueError as e:
            raise ValueError(f"bases.{name}.model: {e}") from None
    if source == "hub":
        snapshot = parse_time_snapshot(f"bases.{name}", "bases", spec)
        if snapshot is None:
            return None  # fetched by a job; convert_base and init_checkpoint check the architecture then
        path = snapshot / spec.get("path", "")
    else:
        path = root / spec["path"]
    if not path.is_dir():
        raise FileNotFoundError(f"bases.{name}.path: {spec['path']} is not a folder")
    try:
        if spec["format"] == "transformers":
            if spec.get("vocab", "keep") != "keep":
                raise ValueError("vocab: a transformers base keeps its vocabulary (keep)")
            return hf_causal_args(spec["path"], "", {}, vocab_size=-1, root=root)
        return read_base_args(spec["format"], path)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(f"bases.{name}: {e}") from None


def _check_run_transformers_base(run: str, spec: dict, job: Any, config: dict[str, Any], root: Path) -> None:
    """A model.hf run from a transformers base is that very model: model.hf.config names the base's folder
    (so train.toml records the architecture) and the tokenizer has the base's vocabulary size."""
    base = config["bases"][spec["init"]]
    same = job.model.hf.config and (root / job.model.hf.config).resolve() == (root / base["path"]).resolve()
    if not same or job.model.hf.config_values:
        raise ValueError(
            f"runs.{run}.init: a run started from transformers base {spec['init']} sets "
            f"model.hf.config = {base['path']} (the base's folder) and no model.hf.config_values"
        )
    vocab = config["tokenizers"][spec["tokenizer"]].get("vocab_size")
    base_vocab = _check_base(spec["init"], base, root).vocab_size
    if vocab is not None and vocab != base_vocab:
        raise ValueError(
            f"runs.{run}.init: base {spec['init']} has {base_vocab} tokens but tokenizer {spec['tokenizer']} "
            f"has {vocab}; a transformers base keeps its vocabulary"
        )


def _check_run_base(run: str, spec: dict, job: Any, config: dict[str, Any], base_args: Any) -> None:
    """A run started from a base has the base's architecture, and its vocabulary unless the base's
    `vocab` policy is drop or resize (lmrepro.checkpoint.init_base checks again against the converted
    checkpoint and the trained tokenizer)."""
    from lmrepro.checkpoint.init_base import check_base_shape
    from lmrepro.model.flavors import model_args

    base = spec["init"]
    try:
        run_args = model_args(job.model.flavor, job.model.vocab_size, **job.model.overrides)
        check_base_shape(run_args, base_args, base)
    except ValueError as e:
        raise ValueError(f"runs.{run}: {e}") from None
    vocab = config["tokenizers"][spec["tokenizer"]].get("vocab_size")
    policy = config["bases"][base].get("vocab", "keep")
    if policy == "keep" and base_args.vocab_size > 0 and vocab is not None and vocab != base_args.vocab_size:
        raise ValueError(
            f"runs.{run}.init: base {base} has {base_args.vocab_size} tokens but tokenizer "
            f"{spec['tokenizer']} has {vocab}; set bases.{base}.vocab to drop or resize"
        )


# ---------------------------------------------------------------------------------- training data

PEEKED_FILES_PER_SPLIT = 16


def _multiple_choice_splits(dataset: str, evals: dict[str, dict]) -> set[str]:
    """The splits of a dataset that multiple_choice evals read (their file's stem): examples, not text."""
    return {
        Path(spec["file"]).stem
        for spec in evals.values()
        if spec["kind"] == "multiple_choice" and spec["dataset"] == dataset
    }


def _check_local_files(name: str, spec: dict, root: Path, example_splits: set[str]) -> None:
    """A local dataset's files: a known format each, and the first few of a split not empty, UTF-8, with
    the text field in the first row (lmrepro.data.peek; cheap: the first chunk or the metadata); a split of
    multiple-choice examples (`example_splits`) only needs JSON objects."""
    if spec.get("source") != "local":
        return
    kind = dataset_kind(spec)
    for split, value in spec["files"].items():
        where = f"datasets.{name}.files.{split}"
        files = select_local_files(value, where, root)
        text_field = None if split in example_splits else spec.get("text_field", "text")
        try:
            for f in files:
                file_format(f)
            for f in files[:PEEKED_FILES_PER_SPLIT]:
                peek_data_file(f, text_field, kind)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None


# A tokenizer.model of Llama 3 (tiktoken) is text, `base64-token rank` a line; SentencePiece's is protobuf.
def _check_tokenizer_file(name: str, spec: dict, root: Path) -> None:
    """The file a hf/tiktoken/sentencepiece tokenizer imports exists and is of that kind (first bytes)."""
    kind, where = spec["kind"], f"tokenizers.{name}.path"
    path = root / spec["path"]
    if kind == "spike_patch":
        return
    if kind == "hf":
        folder = path if path.is_dir() else path.parent
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{where}: {spec['path']} has no tokenizer.json (kind hf is a Hugging Face tokenizer folder; "
                "a tokenizer.model is kind tiktoken or sentencepiece)"
            )
        return
    model = path / "tokenizer.model" if path.is_dir() else path
    shown = Path(spec["path"]) / "tokenizer.model" if path.is_dir() else spec["path"]
    if not model.is_file():
        raise FileNotFoundError(f"{where}: {shown} does not exist (kind {kind} reads a tokenizer.model)")
    with model.open("rb") as f:
        head = f.read(256)
    looks_tiktoken = bool(re.match(rb"[A-Za-z0-9+/=]+ \d+\r?\n", head))
    looks_json = head.lstrip().startswith(b"{")
    actual = "hf (a tokenizer.json)" if looks_json else "tiktoken" if looks_tiktoken else "sentencepiece"
    if (kind == "tiktoken") != looks_tiktoken or looks_json:
        raise ValueError(f"{where}: {shown} is not a {kind} model; it looks like kind {actual}")


def run_datasets(spec: dict) -> dict[str, float]:
    """A run's training datasets and weights (token fractions), sorted by name: `dataset` or `mixture`."""
    if "mixture" in spec:
        return dict(sorted(spec["mixture"].items()))
    return {spec["dataset"]: 1.0}


# ----------------------------------------------------------------------------------- result paths
# The one home of the workflow's result paths (the rules' output: patterns spell the same layout).

RESULTS = "results"


def raw_dir(dataset: str) -> str:
    return f"{RESULTS}/data/{dataset}/raw"


def shards_dir(dataset: str, tokenizer: str, split: str) -> str:
    return f"{RESULTS}/data/{dataset}/{tokenizer}/{split}"


def train_shards_dir(dataset: str, tokenizer: str) -> str:
    return shards_dir(dataset, tokenizer, "train")


def tokenizer_dir(tokenizer: str) -> str:
    return f"{RESULTS}/tokenizers/{tokenizer}"


SPIKE_TOKENIZER_KINDS = ("spike_bytes", "spike_patch")


def tokenizer_file(tokenizer: str, kind: str = "bpe") -> str:
    """The file that marks a tokenizer folder complete: tokenizer.json, or spike_tokenizer.json (spikes)."""
    name = "spike_tokenizer.json" if kind in SPIKE_TOKENIZER_KINDS else "tokenizer.json"
    return f"{tokenizer_dir(tokenizer)}/{name}"


def dataset_kind(spec: dict) -> str:
    """What a dataset's rows are: text documents or spike-count matrices (datasets.<name>.kind)."""
    return spec.get("kind", "text")


def tokenizer_reads(spec: dict) -> str:
    """The dataset kind a tokenizer encodes (tokenizers.<name>.kind)."""
    return "spikes" if spec["kind"] in SPIKE_TOKENIZER_KINDS else "text"


def base_dcp_dir(base: str) -> str:
    return f"{RESULTS}/init/{base}/dcp"


def hub_dir(section: str, name: str) -> str:
    """What the rule fetch_hub writes for bases.<name> / tokenizers.<name> with a Hub repo."""
    return f"{RESULTS}/hub/{section}/{name}"


def standin_base_dir(base: str) -> str:
    return f"{RESULTS}/init/{base}/standin"


def base_input(base: str, spec: dict) -> str:
    """The folder a base's conversion depends on: its own (local), the stand-in or the fetched Hub folder."""
    source = spec.get("source", "local")
    if source == "hub":
        return hub_dir("bases", base)
    return standin_base_dir(base) if source == "synthetic" else spec["path"]


def base_folder(base: str, spec: dict) -> str:
    """The folder holding the base's files (for a Hub base: `path` inside the fetched snapshot)."""
    if spec.get("source", "local") == "hub":
        return str(Path(hub_dir("bases", base)) / "snapshot" / spec.get("path", ""))
    return base_input(base, spec)


def tokenizer_input(tokenizer: str, spec: dict) -> str:
    """What importing a pretrained tokenizer depends on: its `path`, or its fetched Hub folder."""
    return hub_dir("tokenizers", tokenizer) if "repo" in spec else spec["path"]


def tokenizer_source(tokenizer: str, spec: dict) -> str:
    """The tokenizer's files (for a Hub tokenizer: `path` inside the fetched snapshot)."""
    if "repo" in spec:
        return str(Path(hub_dir("tokenizers", tokenizer)) / "snapshot" / spec.get("path", ""))
    return spec["path"]


def run_dir(run: str) -> str:
    return f"{RESULTS}/runs/{run}"


def checkpoint_dir(run: str, step: int | str) -> str:
    return f"{run_dir(run)}/checkpoints/step-{step}"


def export_dir(run: str, step: int | str) -> str:
    return f"{run_dir(run)}/export/step-{step}"


def eval_result(run: str, step: int | str, task: str) -> str:
    return f"{run_dir(run)}/eval/step-{step}/{task}.json"


def baseline_result(run: str, task: str) -> str:
    """A baseline of the run (an `ngram` eval): one per run, not per checkpoint."""
    return f"{run_dir(run)}/baselines/{task}.json"


def retention_record(run: str, step: int | str) -> str:
    """What dropping a checkpoint's optimizer state did (bytes before and after)."""
    return f"{run_dir(run)}/retention/step-{step}.json"


def launch_journal(run: str) -> str:
    """The launchers' journal, kept across retries (Snakemake deletes a job's log before a retry)."""
    return f"{run_dir(run)}/state/launch.log"


def report_dir() -> str:
    return f"{RESULTS}/report"


def text_samples_result(run: str) -> str:
    """A causal run's text samples (runs.<run>.text_samples): every exported step in one JSON."""
    return f"{run_dir(run)}/text_samples.json"


# lmrepro.report.plots.PLOT_NAMES (not imported: the Snakefile would load matplotlib at parse time).
REPORT_PLOTS = ("loss", "perplexity", "learning_rate", "throughput", "memory", "eval_accuracy", "mixture")


def report_files() -> list[str]:
    """The report's declared outputs: summary.csv, summary.html, text_samples.html and one PNG per plot (an
    SVG beside each)."""
    return [
        f"{report_dir()}/summary.csv",
        f"{report_dir()}/summary.html",
        f"{report_dir()}/text_samples.html",
        *(f"{report_dir()}/{name}.png" for name in REPORT_PLOTS),
    ]


def names_of_kind(specs: dict[str, dict], *kinds: str) -> str:
    """A wildcard constraint matching the names whose `kind` is one of `kinds` (none: matches nothing)."""
    names = [name for name, spec in specs.items() if spec["kind"] in kinds]
    return "|".join(re.escape(name) for name in names) if names else "(?!x)x"


def _conventional_source(dataset: str, tokenizer: str, mode: str) -> dict:
    if mode == "streaming":
        return {"files": [raw_dir(dataset)]}
    return {"index": f"{train_shards_dir(dataset, tokenizer)}/{INDEX_FILE}"}


def _run_trainer_value(spec: dict, section: str, key: str, root: str | Path = ".") -> Any:
    """A trainer key of a run as its overrides, else its preset, set it (None if neither does); the strict
    render reports bad values."""
    value = spec.get("overrides", {}).get(section, {}).get(key)
    preset = Path(root) / spec["preset"]
    if value is None and preset.is_file():
        try:
            value = tomllib.loads(preset.read_text()).get(section, {}).get(key)
        except tomllib.TOMLDecodeError:
            value = None
    return value


def run_data_mode(spec: dict, root: str | Path = ".") -> str:
    """data.mode of a run (overrides, else its preset, else shards)."""
    mode = _run_trainer_value(spec, "data", "mode", root)
    return mode if mode in ("shards", "streaming") else "shards"


def run_token_weights(run: str, spec: dict, root: str | Path = ".") -> str | None:
    """The weights file a run's training.token_weights names: its own file, the one the token_weights rule
    computes (inverse_frequency), or None."""
    value = _run_trainer_value(spec, "training", "token_weights", root)
    if not value or not isinstance(value, str):
        return None
    return token_weights_path(run) if value == "inverse_frequency" else value


def token_weights_path(run: str) -> str:
    return f"{run_dir(run)}/token_weights.pt"


def _check_run_kinds(run: str, spec: dict, config: dict[str, Any]) -> None:
    """The run's tokenizer reads what its training and evaluation datasets hold (text or spikes)."""
    tokenizer = config["tokenizers"][spec["tokenizer"]]
    reads = tokenizer_reads(tokenizer)
    evals = config.get("evals", {})
    named = {f"runs.{run}.dataset {d!r}": d for d in run_datasets(spec)}
    named |= {
        f"runs.{run}.evals[] {t!r}": evals[t]["dataset"]
        for t in spec.get("evals", [])
        if "dataset" in evals[t]
    }
    lm_eval = [t for t in spec.get("evals", []) if evals[t]["kind"] == "lm_eval"]
    if lm_eval and reads == "spikes":
        raise ValueError(
            f"runs.{run}.evals[] {lm_eval[0]!r}: lm-eval tasks score text; a spike run "
            f"({spec['tokenizer']!r}) is evaluated by kind loss or ngram"
        )
    for where, dataset in named.items():
        kind = dataset_kind(config["datasets"][dataset])
        if kind != reads:
            raise ValueError(
                f"{where}: dataset {dataset!r} holds {kind} rows, but tokenizer {spec['tokenizer']!r} "
                f"({tokenizer['kind']}) encodes {reads}"
            )
    if reads == "spikes" and run_data_mode(spec) == "streaming":
        raise ValueError(f"runs.{run}: spike datasets train from shards (data.mode = shards), not streaming")
    if "samples" in spec:
        dataset = config["datasets"].get(spec.get("dataset", ""), {})
        if reads != "spikes" or "n_fixed" not in dataset:
            raise ValueError(
                f"runs.{run}.samples: samples are drawn for a run on one spike dataset with n_fixed (a fixed "
                "number of neurons); set runs.<run>.dataset to such a dataset or remove samples"
            )


def _check_packing(name: str, spec: dict) -> None:
    from lmrepro.data.packing import Packing

    try:
        Packing.of_dataset(spec)
    except ValueError as e:
        raise ValueError(f"datasets.{name}.{e}") from None
    if dataset_kind(spec) == "spikes" and "packing" in spec:
        raise ValueError(f"datasets.{name}.packing: spike rows are concatenated as they are; remove packing")


def _check_run_packing(run: str, spec: dict, config: dict[str, Any], root: Path) -> None:
    """Every dataset the run tokenizes (training and loss evals) has a packing its tokenizer can do: the
    separator token is in the vocabulary; streaming reads documents as BOS + text + EOS only."""
    from lmrepro.data.packing import DEFAULT_PACKING, Packing

    evals = config.get("evals", {})
    loss_sets = [evals[t]["dataset"] for t in spec.get("evals", []) if evals[t]["kind"] in ("loss", "ngram")]
    tokenizer = config["tokenizers"][spec["tokenizer"]]
    for name in dict.fromkeys([*run_datasets(spec), *loss_sets]):
        where = f"datasets.{name}"
        packing = Packing.of_dataset(config["datasets"][name])  # valid: check_config read it already
        if packing == DEFAULT_PACKING:
            continue
        if run_data_mode(spec, root) == "streaming" and name in run_datasets(spec):
            raise ValueError(
                f"{where}.packing = {packing.mode!r}: runs.{run} reads it in streaming mode, which joins "
                "documents as BOS + text + EOS only; use data.mode = shards or packing bos_eos"
            )
        token = packing.separator_token
        if packing.mode == "separator" and parse_time_token_id(tokenizer, token, root) is None:
            bpe = tokenizer["kind"] == "bpe"
            known = f"; a bpe tokenizer trained here has {list(_bpe_specials())}" if bpe else ""
            raise ValueError(
                f"{where}.separator_token = {token!r} is not a token of tokenizer {spec['tokenizer']!r} "
                f"(runs.{run}.tokenizer){known}"
            )


def _bpe_specials() -> tuple[str, ...]:
    from lmrepro.data.tokenizer import BPE_SPECIAL_TOKENS

    return BPE_SPECIAL_TOKENS


def parse_time_token_id(tokenizer: dict, token: str, root: str | Path = ".") -> int | None:
    """A token's id in a tokenizer before any job: a tokenizer the workflow trains (bpe) knows only its
    special tokens yet; the others are read from their files (None: not a token)."""
    from lmrepro.data.tokenizer import load_tokenizer

    if tokenizer["kind"] == "bpe":
        specials = _bpe_specials()
        return specials.index(token) if token in specials else None
    source = parse_time_tokenizer_path(tokenizer, root)
    if source is None:  # a Hub tokenizer not cached yet: the tokenize step checks with the fetched files
        return 0
    return load_tokenizer(source).token_to_id(token)


def parse_time_tokenizer_path(tokenizer: dict, root: str | Path = ".") -> Path | None:
    """Where a pretrained tokenizer's files are before any job: its `path`, or inside the cached snapshot of
    its Hub repo (None: not cached yet, to be fetched by the rule fetch_hub)."""
    if "repo" not in tokenizer:
        return Path(root) / tokenizer["path"]
    snapshot = cached_snapshot("tokenizers", tokenizer)
    return snapshot / tokenizer.get("path", "") if snapshot else None


def _check_run_data(run: str, spec: dict, datasets: dict) -> None:
    """Exactly one of runs.<run>.dataset / .mixture; named datasets exist; weights are token fractions."""
    where = f"runs.{run}"
    if ("dataset" in spec) == ("mixture" in spec):
        raise ValueError(
            f"{where}: set exactly one of `dataset` (one dataset) or `mixture` ({{dataset: weight, ...}})"
        )
    if "dataset" in spec:
        _require(datasets, spec["dataset"], f"{where}.dataset", "dataset")
        return
    for name in spec["mixture"]:
        _require(datasets, name, f"{where}.mixture.{name}", "dataset")
    check_weights(spec["mixture"], f"{where}.mixture")


# ------------------------------------------------------------------------------------- init chains
# `runs.<run>.init: {run: <name>, step: <N> | last}` starts a run from another run's segment checkpoint
# (model weights only; optimizer, data order and schedule fresh), as gpt-neuro's per-lab fine-tunes start
# from a primate run; the rule init_checkpoint takes that checkpoint as its input, so Snakemake orders the
# jobs. Checked at parse time: the run and step exist, the model is the same, and no chain is a cycle.


def init_run(spec: dict) -> dict | None:
    """The {run, step} a run starts from, or None (a base name or a seeded random init)."""
    init = spec.get("init")
    return init if isinstance(init, dict) else None


def init_run_step(runs: dict[str, dict], run: str) -> tuple[str, int] | None:
    """(source run, its step) of a run's init chain, `last` resolved; None without one. Raises naming
    the key when the source run or the step does not exist."""
    chain = init_run(runs[run])
    if chain is None:
        return None
    where = f"runs.{run}.init"
    source = chain["run"]
    if source not in runs or source == run:
        valid = sorted(r for r in runs if r != run)
        raise ValueError(f"{where}.run = {source!r} is not another run of this experiment; valid: {valid}")
    ends = segment_boundaries(runs[source]["steps"], runs[source]["segment_steps"])
    step = ends[-1] if chain["step"] == "last" else chain["step"]
    if step not in ends:
        raise ValueError(
            f"{where}.step = {chain['step']!r} is not a segment end of run {source}; valid: {ends} or last"
        )
    return source, step


def check_init_chains(runs: dict[str, dict]) -> None:
    """Every init chain names an existing run and step, and no run starts (through others) from itself."""
    sources = {run: step[0] for run in runs if (step := init_run_step(runs, run)) is not None}
    for run in sources:
        seen = [run]
        while seen[-1] in sources:
            nxt = sources[seen[-1]]
            if nxt in seen:
                cycle = " -> ".join([*seen[seen.index(nxt) :], nxt])
                raise ValueError(f"runs.{run}.init: the init chain is a cycle: {cycle}")
            seen.append(nxt)


def check_same_model(run: str, job: Any, source: str, source_job: Any, runs: dict[str, dict]) -> None:
    """The fine-tune has its source's model (architecture and tokenizer): its weights load strictly."""
    where = f"runs.{run}.init"
    if runs[run]["tokenizer"] != runs[source]["tokenizer"]:
        raise ValueError(
            f"{where}: run {source} uses tokenizer {runs[source]['tokenizer']!r}, this run "
            f"{runs[run]['tokenizer']!r}; a run started from another run's checkpoint keeps its tokenizer"
        )
    ours, theirs = _model_shape(job), _model_shape(source_job)
    if ours != theirs:
        diff = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        raise ValueError(
            f"{where}: the model differs from run {source}'s in {diff}; a run started from another run's "
            "checkpoint keeps its architecture (set model.flavor / model.overrides alike)"
        )


def _model_shape(job: Any) -> dict:
    """The rendered model section that decides the weights (max_seq_len only sizes the RoPE table)."""
    model = job.model
    overrides = {k: v for k, v in model.overrides.items() if k != "max_seq_len"}
    return {"flavor": model.flavor, "overrides": overrides, "hf": str(model.hf)}
