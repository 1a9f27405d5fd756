"""Benchmark: a random Llama-3.2-1B-shape checkpoint (bf16, tied) converted HF → DCP → HF on this machine.

Each direction runs in its own child process. Its peak resident memory (the child's VmHWM) is compared
with the model's bytes in bf16, after subtracting the peak of a child that only imports python + torch,
measured in the same run. The source folder is written with the ``safetensors`` library itself (not our
writer), sharded like a Hub checkpoint; the round trip is then compared with it tensor by tensor, bit for
bit. Not a test: run it by hand (a few minutes, ~8 GB of disk), e.g.

    nice -n 10 python benchmarks/conversion/bench_conversion.py

and commit results.json / results.md next to this script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmrepro.checkpoint.hf import INDEX_FILE, hf_config, hf_name, hf_weight_files, model_shapes
from lmrepro.checkpoint.safetensors_io import SafetensorsReader
from lmrepro.model.flavors import model_args

HERE = Path(__file__).resolve().parent
LIMIT_RATIO = 1.5  # the bound: peak memory < 1.5 x the model's bytes in its dtype


def write_source(out: Path, flavor: str, vocab: int, n_layers: int | None, shard_bytes: int) -> int:
    """A random HF Llama folder in bf16 written with safetensors.save_file; returns the weights' bytes."""
    from safetensors.torch import save_file

    overrides = {"n_layers": n_layers} if n_layers else {}
    args = model_args(flavor, vocab, **overrides)
    out.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    shapes = model_shapes(args)  # tied: no lm_head, as transformers saves it
    groups: list[list[str]] = [[]]
    size = 0
    for key, shape in shapes.items():
        nbytes = math.prod(shape) * 2
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    weight_map = {}
    for i, keys in enumerate(groups, start=1):
        name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        shard = {hf_name(k): (0.02 * torch.randn(shapes[k], generator=g)).bfloat16() for k in keys}
        save_file(shard, out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
        del shard
    total = sum(math.prod(s) * 2 for s in shapes.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2))
    config = hf_config(args, bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return total


def run_child(code: str) -> dict:
    """Run python -c code in a child: wall seconds, the child's stdout and its peak resident memory.

    The peak is the child's VmHWM (/proc/self/status), read by the child as its last act. ``ru_maxrss`` of
    a child would not do: Linux carries the parent's RSS at fork time into it, and this parent holds torch.
    """
    report = "\nprint([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        raise RuntimeError(f"child failed ({run.returncode}): {code}\n{run.stdout}{run.stderr}")
    lines = run.stdout.strip().splitlines()
    return {
        "wall_s": round(wall, 2),
        "peak_rss_bytes": int(lines[-1]) * 1024,
        "stdout": "\n".join(lines[:-1]),
    }


def timed(call: str) -> str:
    """Child code that times `call` itself (wall time without interpreter and import start-up)."""
    return (
        "import time, lmrepro.checkpoint.convert as c, lmrepro.checkpoint.export as e\n"
        f"t = time.perf_counter(); {call}; print(round(time.perf_counter() - t, 2))"
    )


def same_weights(a: Path, b: Path) -> tuple[int, bool]:
    """Compare two HF folders tensor by tensor (streamed); (tensors compared, all bit-identical)."""
    where = {}
    for path in hf_weight_files(b):
        reader = SafetensorsReader(path)
        where.update(dict.fromkeys(reader.entries, reader))
    count, equal = 0, True
    for path in hf_weight_files(a):
        reader = SafetensorsReader(path)
        for key in reader.entries:
            equal &= torch.equal(reader.read(key), where[key].read(key))
            count += 1
    return count, equal and count == len(where)


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="/tmp/lmrepro-bench-conversion")
    parser.add_argument("--flavor", default="llama3.2-1B")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--n-layers", type=int, help="override the flavor's layer count (quick trials)")
    parser.add_argument("--shard-bytes", type=int, default=1 << 30, help="source shard size")
    parser.add_argument("--out", default=str(HERE), help="where results.json / results.md go")
    args = parser.parse_args()

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    src, dcp_dir, hf_dir = work / "src", work / "dcp", work / "hf"
    info = {"machine": machine(), "flavor": args.flavor, "vocab": args.vocab, "n_layers": args.n_layers}
    t = time.perf_counter()
    model_bytes = write_source(src, args.flavor, args.vocab, args.n_layers, args.shard_bytes)
    info["source_written_s"] = round(time.perf_counter() - t, 1)
    info["model_bytes_bf16"] = model_bytes
    info["source_shards"] = len(hf_weight_files(src))

    baseline = run_child("import torch")
    baseline_lmrepro = run_child("import torch, lmrepro.checkpoint.convert, lmrepro.checkpoint.export")
    to_dcp = run_child(timed(f"c.convert_to_dcp('hf', {str(src)!r}, {str(dcp_dir)!r})"))
    to_hf = run_child(timed(f"e.dcp_to_hf({str(dcp_dir)!r}, {str(hf_dir)!r})"))
    count, equal = same_weights(src, hf_dir)
    dcp_files = len(list(dcp_dir.glob("*.distcp")))
    shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for name, r in (("hf_to_dcp", to_dcp), ("dcp_to_hf", to_hf)):
        extra = r["peak_rss_bytes"] - baseline["peak_rss_bytes"]
        rows[name] = {
            "wall_s": r["wall_s"],
            "conversion_s": float(r["stdout"].splitlines()[-1]),
            "peak_rss_bytes": r["peak_rss_bytes"],
            "peak_rss_over_import_bytes": extra,
            "ratio_to_model_bytes": round(extra / model_bytes, 3),
            "ratio_total_rss_to_model_bytes": round(r["peak_rss_bytes"] / model_bytes, 3),
        }
    info.update(
        baseline_import_torch_rss_bytes=baseline["peak_rss_bytes"],
        baseline_import_lmrepro_rss_bytes=baseline_lmrepro["peak_rss_bytes"],
        directions=rows,
        dcp_files=dcp_files,
        round_trip_tensors=count,
        round_trip_bit_identical=equal,
        within_limit=all(r["ratio_to_model_bytes"] < LIMIT_RATIO for r in rows.values()),
    )
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(info))
    print((out / "results.md").read_text())
    if not (equal and info["within_limit"]):
        sys.exit(1)


def render_markdown(info: dict) -> str:
    m, gib = info["machine"], 2**30
    lines = [
        "# Conversion benchmark: HF → DCP → HF",
        "",
        f"Random `{info['flavor']}`-shape Llama (vocab {info['vocab']}, tied embeddings), bf16, "
        f"{info['model_bytes_bf16'] / gib:.2f} GiB of weights in {info['source_shards']} safetensors shards "
        "written by the `safetensors` library. Produced by `bench_conversion.py` (raw numbers: "
        "`results.json`).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM (shared with other jobs; load "
        f"average at start {m['load_average_at_start']}), Python {m['python']}, torch {m['torch']}. "
        "The source was just written, so reads come from the page cache.",
        "",
        "| direction | wall (s) | conversion (s) | peak RSS (GiB) | peak − import (GiB) | ÷ model bytes |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (("hf_to_dcp", "HF → DCP"), ("dcp_to_hf", "DCP → HF")):
        r = info["directions"][name]
        lines.append(
            f"| {label} | {r['wall_s']:.1f} | {r['conversion_s']:.1f} | {r['peak_rss_bytes'] / gib:.2f} | "
            f"{r['peak_rss_over_import_bytes'] / gib:.2f} | {r['ratio_to_model_bytes']:.2f} |"
        )
    lines += [
        "",
        f"- Baseline: a child that only runs `import torch` peaks at "
        f"{info['baseline_import_torch_rss_bytes'] / 2**20:.0f} MiB "
        f"(`import torch` + lmrepro's checkpoint modules: "
        f"{info['baseline_import_lmrepro_rss_bytes'] / 2**20:.0f} MiB). "
        '"peak − import" subtracts the former; the bound is 1.5 × the model\'s bytes '
        f"({'met' if info['within_limit'] else 'NOT met'}).",
        "- Wall = the child process, interpreter and imports included; conversion = the call alone.",
        f"- The DCP folder held {info['dcp_files']} `.distcp` files (one per tensor, see `convert.py`).",
        f"- Round trip: {info['round_trip_tensors']} tensors compared with the source, bit-identical: "
        f"{info['round_trip_bit_identical']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
