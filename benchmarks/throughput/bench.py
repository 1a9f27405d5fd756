"""Single-GPU training throughput: lmrepro vs torchtitan 0.2.2, same machine, same run, same shape/data/batch.

Llama-3.2-1B shape (dim 2048, 16 layers, 32 heads, 8 kv heads, ffn 8192, vocab 128256, rope theta 5e5,
untied output layer as torchtitan's llama3 model has), bf16 compute with fp32 master weights, local batch
4 × seq 4096, torch.compile per block, no activation checkpointing. Both train on the same synthetic
corpus with the same BPE tokenizer (ids < 512; the model's vocabulary stays 128256). Throughput, MFU and
peak memory are each framework's own logged numbers over the steps after compilation.

    python benchmarks/throughput/bench.py --out results.json [--steps 40] [--variants base,...]

Needs a CUDA GPU and torchtitan 0.2.2 importable (the device tool carries the wheels).
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("LMREPRO_BENCH_ROOT", HERE.parents[1]))  # a snapshot of src/ + workflow/scripts/
SEQ_LEN, LOCAL_BATCH = 4096, 4
TORCHTITAN_WRAPPER = """
import sys
from torchtitan.models.llama3 import TransformerModelArgs, llama3_args
llama3_args["1B"] = TransformerModelArgs(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, vocab_size=128256,
                                         ffn_dim_multiplier=1.5, multiple_of=256, rope_theta=500000)
from torchtitan.train import Trainer, main
main(Trainer)
"""


def prepare_data(work: Path) -> dict[str, Path]:
    from lmrepro.data.encode import tokenize_to_shards
    from lmrepro.data.shards import INDEX_FILE
    from lmrepro.data.sources import prepare_dataset
    from lmrepro.data.tokenizer import train_bpe

    raw = work / "raw"
    if not raw.exists():
        prepare_dataset({"source": "synthetic", "seed": 1234, "num_train_documents": 60000}, raw)
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


def run_torchtitan(work: Path, data: dict, steps: int, float8: str = "off") -> dict:
    shutil.rmtree(work / "torchtitan_out", ignore_errors=True)
    wrapper = work / "torchtitan_1b.py"
    wrapper.write_text(TORCHTITAN_WRAPPER)
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
        "1B",
        "--model.hf_assets_path",
        str(data["tokenizer"]),
        "--training.dataset",
        "c4_test",
        "--training.dataset_path",
        str(data["jsonl_dir"]),
        "--training.local_batch_size",
        str(LOCAL_BATCH),
        "--training.seq_len",
        str(SEQ_LEN),
        "--training.steps",
        str(steps),
        "--training.mixed_precision_param",
        "bfloat16",
        "--parallelism.data_parallel_shard_degree",
        "1",
        "--compile.enable",
        "--activation_checkpoint.mode",
        "none",
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
    work: Path, data: dict, steps: int, name: str, training: dict, parallel: dict, env_extra: dict
) -> dict:
    from lmrepro.config import JobConfig, dump_toml, from_dict

    run_dir = work / f"lmrepro_{name}"
    config = {
        "run": name,
        "run_dir": str(run_dir),
        "model": {
            "flavor": "llama3.2-1B",
            "vocab_size": 128256,
            "overrides": {"tie_embeddings": False, "max_seq_len": SEQ_LEN},
        },
        "data": {"train_index": str(data["index"]), "seq_len": SEQ_LEN},
        "training": {
            "steps": steps,
            "global_batch_tokens": LOCAL_BATCH * SEQ_LEN,
            "dtype": "bfloat16",
            "compile": True,
            **training,
        },
        "parallel": parallel,
        "checkpoint": {"interval_steps": 100000},
        "metrics": {"log_every_steps": 10, "tensorboard": False},
    }
    shutil.rmtree(run_dir, ignore_errors=True)  # a warm machine keeps /tmp between calls
    run_dir.mkdir(parents=True)
    toml = run_dir / "train.toml"
    toml.write_text(dump_toml(from_dict(JobConfig, config)))
    env = {
        **os.environ,
        **env_extra,
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    seed = work / "seed-step-0"  # one seed checkpoint shared by every variant (same shape, same seed)
    if not seed.exists():
        subprocess.run(
            [
                sys.executable,
                str(REPO / "workflow/scripts/init_checkpoint.py"),
                "--config",
                str(toml),
                "--save-to",
                str(seed),
            ],
            check=True,
            env=env,
            timeout=900,
        )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(HERE / "lmrepro_train.py"),
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
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    (work / f"lmrepro_{name}.log").write_text(out.stdout + out.stderr)
    if out.returncode:
        raise RuntimeError(f"lmrepro {name} failed:\n{(out.stdout + out.stderr)[-4000:]}")
    rows = [json.loads(line) for line in (run_dir / "state" / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "loss", "tokens_per_s_per_device", "mfu", "peak_memory_gib")
    rows = [{k: r[k] for k in keep} | {"tokens_per_s": r["tokens_per_s_per_device"]} for r in rows]
    return {"rows": rows, "wall_s": time.monotonic() - started}


def steady(rows: list[dict]) -> dict:
    """Mean over logged windows after the first (which includes compilation)."""
    later = [r for r in rows if r["step"] > 10] or rows
    mean = {k: sum(r[k] for r in later) / len(later) for k in ("tokens_per_s", "mfu")}
    return {
        **mean,
        "peak_memory_gib": max(r["peak_memory_gib"] for r in rows),
        "steps": [r["step"] for r in later],
    }


# name: (training overrides, parallel overrides, env for lmrepro_train.py)
VARIANTS = {
    "base": ({}, {}, {}),  # bf16 autocast, residual stream in bf16 (lmrepro's one-GPU default)
    "fp32res": ({}, {}, {"LMREPRO_BENCH_RESIDUAL": "fp32"}),  # residual stream in fp32, as torchtitan's 1 GPU
    "f8tw": ({}, {}, {"LMREPRO_BENCH_RESIDUAL": "fp32", "LMREPRO_BENCH_FLOAT8": "tensorwise"}),
    "f8row": ({}, {}, {"LMREPRO_BENCH_RESIDUAL": "fp32", "LMREPRO_BENCH_FLOAT8": "rowwise"}),
    "f8row_bf16res": ({}, {}, {"LMREPRO_BENCH_FLOAT8": "rowwise"}),
    "autotune": ({"compile_mode": "max-autotune-no-cudagraphs"}, {}, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="/tmp/lmrepro-throughput")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--variants", default="base")
    parser.add_argument("--skip-torchtitan", action="store_true")
    parser.add_argument(
        "--torchtitan", default="off", help="torchtitan runs: off (bf16), tensorwise, rowwise"
    )
    args = parser.parse_args()
    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(work)
    results = {
        "machine": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "shape": "Llama-3.2-1B (untied), bf16, local batch 4 x seq 4096, compiled, no AC",
        "runs": {},
    }
    import importlib.metadata as md

    for pkg in ("torchtitan", "torchao"):
        try:
            results[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            results[pkg] = None
    jobs = [] if args.skip_torchtitan else [("tt", f) for f in args.torchtitan.split(",")]
    jobs += [("lm", v) for v in args.variants.split(",")]
    order = os.environ.get("LMREPRO_BENCH_ORDER")  # e.g. "tt:off,lm:base,tt:rowwise" to interleave
    if order:
        jobs = [tuple(j.split(":")) for j in order.split(",")]
    for kind, name in jobs:
        try:
            if kind == "tt":
                key = "torchtitan-0.2.2" + ("" if name == "off" else f"-float8-{name}")
                r = run_torchtitan(work, data, args.steps, name)
            else:
                key = f"lmrepro-{name}"
                training, parallel, env_extra = VARIANTS[name]
                r = run_lmrepro(work, data, args.steps, name, training, parallel, env_extra)
            results["runs"][key] = {**steady(r["rows"]), "rows": r["rows"], "wall_s": r["wall_s"]}
        except Exception as e:  # a failed run is a result too; the others still run
            results["runs"][key] = {"error": f"{type(e).__name__}: {str(e)[-3000:]}"}
        print(key, json.dumps({k: v for k, v in results["runs"][key].items() if k != "rows"}), flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    base = results["runs"].get("torchtitan-0.2.2")
    for run in results["runs"].values():
        if base and "tokens_per_s" in base and "tokens_per_s" in run:
            run["tokens_per_s_vs_torchtitan"] = run["tokens_per_s"] / base["tokens_per_s"]
            run["peak_memory_vs_torchtitan"] = run["peak_memory_gib"] / base["peak_memory_gib"]
    Path(args.out).write_text(json.dumps(results, indent=2))
    for name, run in results["runs"].items():
        if "tokens_per_s" not in run:
            print(f"{name:24s} failed")
            continue
        print(
            f"{name:24s} {run['tokens_per_s']:10.0f} tokens/s  mfu {run['mfu']:.1%}  "
            f"peak {run['peak_memory_gib']:.1f} GiB  ratio {run.get('tokens_per_s_vs_torchtitan', 1):.3f}"
        )


if __name__ == "__main__":
    main()
