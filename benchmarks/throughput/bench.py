"""Single-GPU training throughput: lmrepro vs torchtitan, same machine, same run, same shape/data/batch.

Shapes (``--shape``): ``llama3.2-1B`` (the headline: dim 2048, 16 layers, 32 heads, 8 kv heads, ffn 8192,
vocab 128256, rope theta 5e5, untied output layer as torchtitan's llama3 model has; local batch 4 × seq
4096, no activation checkpointing), ``neuro-250M`` (gpt-neuro-arch's 250M at its production setting:
seq 8192, 16 sequences, vocab 32000, rope theta 1e4, full activation checkpointing) and ``mlm-1B``
(torchtitan-mlm's 1B, the 870M shape: seq 16384, bidirectional attention, 2 sequences, full activation
checkpointing). bf16 compute with fp32 master weights, torch.compile per block. Both train on the same
synthetic corpus with the same BPE tokenizer (ids < 512; the model's vocabulary is the shape's).
Throughput, MFU and peak memory are each framework's own logged numbers over the steps after compilation.

    python benchmarks/throughput/bench.py --out results.json [--shape llama3.2-1B] [--steps 40]
        [--variants base,fp32res,...] [--torchtitan off,tensorwise]

Needs a CUDA GPU and torchtitan importable (the device tool carries the wheels); ``--cpu-smoke`` runs
the lmrepro side end to end on the debug flavor on CPU (the harness's own test, no numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("LMREPRO_BENCH_ROOT", HERE.parents[1]))  # a snapshot of src/ + workflow/scripts/


@dataclass(frozen=True)
class Shape:
    flavor: str  # lmrepro's
    overrides: dict
    seq_len: int
    local_batch: int
    activation_checkpoint: str  # none | full
    vocab_size: int
    torchtitan_args: str  # TransformerModelArgs(...) of the same shape for torchtitan 0.2.2
    causal: bool = True
    training: dict = field(default_factory=dict)


SHAPES = {
    "llama3.2-1B": Shape(
        "llama3.2-1B", {"tie_embeddings": False, "max_seq_len": 4096}, 4096, 4, "none", 128256,
        "dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.5, "
        "multiple_of=256, rope_theta=500000",
    ),
    "neuro-250M": Shape(
        "250M", {"max_seq_len": 8192}, 8192, 16, "full", 32000,
        "dim=1024, n_layers=16, n_heads=16, n_kv_heads=8, vocab_size=32000, ffn_dim_multiplier=1.3, "
        "multiple_of=1024, rope_theta=10000",
    ),
    "mlm-1B": Shape(
        "1B", {"max_seq_len": 16384, "causal": False}, 16384, 2, "full", 128256,
        "dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256, ffn_dim_multiplier=1.3, "
        "multiple_of=1024, rope_theta=500000",
        causal=False,
    ),
    "debug": Shape(
        "debug", {"max_seq_len": 256}, 256, 2, "none", 512, "",
        training={"dtype": "float32", "compile": False},
    ),
}  # fmt: skip

# torchtitan 0.2.2 with the shape registered as flavor "bench"; a bidirectional shape gets SDPA without the
# causal mask (torchtitan's llama3 has no bidirectional option; the torchtitan-mlm fork patched it in).
TORCHTITAN_WRAPPER = """
import sys
import torch.nn.functional as F
from torchtitan.models.llama3 import TransformerModelArgs, llama3_args
llama3_args["bench"] = TransformerModelArgs({args})
if not {causal}:
    _sdpa = F.scaled_dot_product_attention
    def _bidirectional(*a, **k):
        k["is_causal"] = False
        return _sdpa(*a, **k)
    F.scaled_dot_product_attention = _bidirectional
from torchtitan.train import Trainer, main
main(Trainer)
"""


def prepare_data(work: Path, small: bool = False) -> dict[str, Path]:
    from lmrepro.data.encode import tokenize_to_shards
    from lmrepro.data.shards import INDEX_FILE
    from lmrepro.data.sources import prepare_dataset
    from lmrepro.data.tokenizer import train_bpe

    raw = work / "raw"
    if not raw.exists():
        documents = 2000 if small else 60000
        prepare_dataset({"source": "synthetic", "seed": 1234, "num_train_documents": documents}, raw)
    tok = work / "tokenizer"
    if not tok.exists():
        train_bpe([raw / "train.jsonl"], 512, tok)
    shards = work / "shards"
    if not (shards / INDEX_FILE).exists():
        tokenize_to_shards([raw / "train.jsonl"], tok, shards)
    jsonl_dir = work / "jsonl"
    jsonl_dir.mkdir(exist_ok=True)
    (jsonl_dir / "train.jsonl").write_bytes((raw / "train.jsonl").read_bytes())
    return {"tokenizer": tok, "index": shards / INDEX_FILE, "jsonl_dir": jsonl_dir}


def run_torchtitan(work: Path, data: dict, steps: int, shape: Shape, float8: str = "off") -> dict:
    shutil.rmtree(work / "torchtitan_out", ignore_errors=True)
    wrapper = work / "torchtitan_bench.py"
    wrapper.write_text(TORCHTITAN_WRAPPER.format(args=shape.torchtitan_args, causal=shape.causal))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(wrapper),
        "--model.name",
        "llama3",
        "--model.flavor",
        "bench",
        "--model.hf_assets_path",
        str(data["tokenizer"]),
        "--training.dataset",
        "c4_test",
        "--training.dataset_path",
        str(data["jsonl_dir"]),
        "--training.local_batch_size",
        str(shape.local_batch),
        "--training.seq_len",
        str(shape.seq_len),
        "--training.steps",
        str(steps),
        "--training.mixed_precision_param",
        "bfloat16",
        "--parallelism.data_parallel_shard_degree",
        "1",
        "--compile.enable",
        "--activation_checkpoint.mode",
        shape.activation_checkpoint,
        "--metrics.log_freq",
        "10",
        "--job.dump_folder",
        str(work / "torchtitan_out"),
    ]
    if float8 != "off":  # torchtitan 0.2.2's Float8Converter (torchao), output layer left in bf16
        cmd += ["--model.converters", "quantize.linear.float8",
                "--quantize.linear.float8.recipe_name", float8,
                "--quantize.linear.float8.filter_fqns", "output"]  # fmt: skip
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=900)
    log = out.stdout + out.stderr
    (work / f"torchtitan-{float8}.log").write_text(log)
    shutil.rmtree(work / "torchtitan_out", ignore_errors=True)
    if out.returncode:
        raise RuntimeError(f"torchtitan failed:\n{log[-4000:]}")
    rows = []
    pattern = r"step:\s*(\d+).*?memory:\s*([\d.]+)GiB.*?tps:\s*([\d,]+).*?mfu:\s*([\d.]+)%"
    for m in re.finditer(pattern, re.sub(r"\x1b\[[0-9;]*m", "", log)):
        rows.append(
            {
                "step": int(m[1]),
                "peak_memory_gib": float(m[2]),
                "tokens_per_s": float(m[3].replace(",", "")),
                "mfu": float(m[4]) / 100,
            }
        )
    return {"rows": rows, "wall_s": time.monotonic() - started}


def run_lmrepro(
    work: Path, data: dict, steps: int, name: str, shape: Shape, sections: dict, scratch: Path
) -> dict:
    """One lmrepro run through workflow/scripts/train.py; its checkpoints go to ``scratch`` (tmpfs on the
    device: a 1B run's DCP with optimizer state is 15 GB) and are deleted afterwards."""
    from lmrepro.config import JobConfig, dump_toml, from_dict

    run_dir = scratch / f"lmrepro_{name}"
    training = {
        "steps": steps,
        "global_batch_tokens": shape.local_batch * shape.seq_len,
        "dtype": "bfloat16",
        "compile": True,
        "activation_checkpoint": shape.activation_checkpoint,
        **shape.training,
        **sections.get("training", {}),
    }
    config = {
        "run": name,
        "run_dir": str(run_dir),
        "model": {"flavor": shape.flavor, "vocab_size": shape.vocab_size, "overrides": shape.overrides},
        "data": {"sources": [{"name": "synthetic", "index": str(data["index"])}], "seq_len": shape.seq_len},
        "training": training,
        "optimizer": sections.get("optimizer", {}),
        "schedule": sections.get("schedule", {}),
        "parallel": sections.get("parallel", {}),
        "checkpoint": {"interval_steps": 100000, **sections.get("checkpoint", {})},
        "metrics": {"log_every_steps": 10, "tensorboard": False},
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # a warm machine keeps /tmp between calls
    run_dir.mkdir(parents=True)
    toml = run_dir / "train.toml"
    toml.write_text(dump_toml(from_dict(JobConfig, config)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    seed = scratch / f"seed-step-0-{shape.flavor}"  # one seed checkpoint per shape, shared by its variants
    if not seed.exists():
        init = [sys.executable, str(REPO / "workflow/scripts/init_checkpoint.py"), "--config", str(toml)]
        subprocess.run([*init, "--save-to", str(seed)], check=True, env=env, timeout=900)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(REPO / "workflow/scripts/train.py"),
        "--config",
        str(toml),
        "--resume-from",
        str(seed),
        "--save-to",
        str(run_dir / "checkpoints" / f"step-{steps}"),
        "--until-step",
        str(steps),
    ]
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    log = out.stdout + out.stderr
    (work / f"lmrepro_{name}.log").write_text(log)
    try:
        if out.returncode:
            raise RuntimeError(f"lmrepro {name} failed:\n{log[-4000:]}")
        metrics = (run_dir / "state" / "metrics.jsonl").read_text().splitlines()
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    rows = [json.loads(line) for line in metrics]
    keep = ("step", "loss", "tokens_per_s_per_device", "mfu", "peak_memory_gib")
    rows = [{k: r[k] for k in keep} | {"tokens_per_s": r["tokens_per_s_per_device"]} for r in rows]
    return {"rows": rows, "wall_s": time.monotonic() - started, "checkpoint_saves": checkpoint_saves(log)}


def checkpoint_saves(log: str) -> dict:
    """Seconds the training loop was blocked per rolling checkpoint: a synchronous save's whole time, or
    an async save's staging (CPU copy) plus whatever the next save or the end waited for its writes."""

    def seconds(pattern: str) -> list[float]:
        return [float(x) for x in re.findall(pattern, log)]

    sync = seconds(r"rolling checkpoint at step \d+ saved in ([\d.]+) s")
    staged = seconds(r"rolling checkpoint at step \d+ staged in ([\d.]+) s")
    waited = seconds(r"rolling checkpoint step-\d+ complete \(waited ([\d.]+) s\)")
    return {"sync_s": sync, "async_staged_s": staged, "async_waited_s": waited}


def steady(rows: list[dict]) -> dict:
    """Mean over logged windows after the first (which includes compilation)."""
    later = [r for r in rows if r["step"] > 10] or rows
    mean = {k: sum(r[k] or 0.0 for r in later) / len(later) for k in ("tokens_per_s", "mfu")}
    return {
        **mean,
        "peak_memory_gib": max(r["peak_memory_gib"] for r in rows),
        "steps": [r["step"] for r in later],
    }


FP32RES = {"residual_dtype": "float32"}
# name: config sections of the variant (over the shape's defaults)
VARIANTS = {
    "base": {},  # bf16 autocast, residual stream in bf16 (lmrepro's one-GPU default)
    "fp32res": {"training": FP32RES},  # the residual stream in fp32, as torchtitan's one GPU
    "f8tw": {"training": {**FP32RES, "float8": "tensorwise"}},
    "f8row": {"training": {**FP32RES, "float8": "rowwise"}},
    "cudnn": {"training": {**FP32RES, "attention_backend": "cudnn"}},
    "sdpa_flash": {"training": {**FP32RES, "attention_backend": "flash"}},
    "flash_attn": {"training": {**FP32RES, "attention_backend": "flash_attn"}},
    # checkpoint cost: a rolling checkpoint every 10 steps, synchronous or DCP async_save
    "ckpt_sync": {"training": FP32RES, "checkpoint": {"interval_steps": 10, "async_save": False}},
    "ckpt_async": {"training": FP32RES, "checkpoint": {"interval_steps": 10, "async_save": True}},
    # loss over many steps: a learning rate a 1B model trains with
    "loss_bf16": {"training": FP32RES, "optimizer": {"lr": 3e-4}, "schedule": {"warmup_steps": 30}},
    "loss_f8tw": {"training": {**FP32RES, "float8": "tensorwise"}, "optimizer": {"lr": 3e-4},
                  "schedule": {"warmup_steps": 30}},
    "loss_f8row": {"training": {**FP32RES, "float8": "rowwise"}, "optimizer": {"lr": 3e-4},
                   "schedule": {"warmup_steps": 30}},
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/lmrepro-throughput")
    parser.add_argument("--scratch", default="/dev/shm/lmrepro-throughput", help="run folders, checkpoints")
    parser.add_argument("--shape", default="llama3.2-1B", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", default="base")
    parser.add_argument("--skip-torchtitan", action="store_true")
    parser.add_argument(
        "--torchtitan", default="off", help="torchtitan runs: off (bf16), tensorwise, rowwise"
    )
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="the debug shape on CPU, lmrepro only (tests the harness)"
    )
    args = parser.parse_args()
    import importlib.metadata as md

    import torch

    shape = SHAPES["debug" if args.cpu_smoke else args.shape]
    work, scratch = Path(args.work), Path(args.scratch)
    work.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    data = prepare_data(work, small=args.cpu_smoke)
    results = {
        "machine": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "shape": args.shape if not args.cpu_smoke else "debug",
        "shape_spec": {k: v for k, v in vars(shape).items() if k != "torchtitan_args"},
        "runs": {},
    }
    for pkg in ("torchtitan", "torchao"):
        try:
            results[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            results[pkg] = None
    tt_key = f"torchtitan-{results['torchtitan']}"
    skip_tt = args.skip_torchtitan or args.cpu_smoke
    jobs = [] if skip_tt else [("tt", f) for f in args.torchtitan.split(",")]
    jobs += [("lm", v) for v in args.variants.split(",")]
    order = os.environ.get("LMREPRO_BENCH_ORDER")  # e.g. "tt:off,lm:base,tt:rowwise" to interleave
    if order:
        jobs = [tuple(j.split(":")) for j in order.split(",")]
    for kind, name in jobs:
        key = (tt_key + ("" if name == "off" else f"-float8-{name}")) if kind == "tt" else f"lmrepro-{name}"
        try:
            if kind == "tt":
                r = run_torchtitan(work, data, args.steps, shape, name)
            else:
                r = run_lmrepro(work, data, args.steps, name, shape, VARIANTS[name], scratch)
            results["runs"][key] = {**steady(r["rows"]), **r}
        except Exception as e:  # a failed run is a result too; the others still run
            results["runs"][key] = {"error": f"{type(e).__name__}: {str(e)[-3000:]}"}
        print(key, json.dumps({k: v for k, v in results["runs"][key].items() if k != "rows"}), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    shutil.rmtree(scratch, ignore_errors=True)
    base = results["runs"].get(tt_key)
    for run in results["runs"].values():
        if base and "tokens_per_s" in base and "tokens_per_s" in run:
            run["tokens_per_s_vs_torchtitan"] = run["tokens_per_s"] / base["tokens_per_s"]
            run["peak_memory_vs_torchtitan"] = run["peak_memory_gib"] / base["peak_memory_gib"]
    Path(args.out).write_text(json.dumps(results, indent=2))
    for name, run in results["runs"].items():
        if "tokens_per_s" not in run:
            print(f"{name:32s} failed")
            continue
        print(
            f"{name:32s} {run['tokens_per_s']:10.0f} tokens/s  mfu {run['mfu']:.1%}  "
            f"peak {run['peak_memory_gib']:.1f} GiB  ratio {run.get('tokens_per_s_vs_torchtitan', 1):.3f}"
        )


if __name__ == "__main__":
    main()
