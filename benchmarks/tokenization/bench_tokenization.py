"""Tokenization throughput: lmrepro's tokenize step against a plain single-process `encode` loop.

For two engines — a Hugging Face tokenizer.json (the kind bpe/hf path) and tiktoken with a Llama-3 style
tokenizer.model (the kind tiktoken path) — measure tokens/s of

* the baseline: the documents already in memory, `encode` called once per document in one process;
* `tokenize_to_shards` end to end (read JSONL, encode, write shards + index.json) with 1 and N processes,

and report the ratio to the baseline. The corpus is the embedded default's synthetic generator at a larger
scale (~50 MB of JSONL); the tiktoken ranks file is made from the same trained BPE, so both engines split
text into (almost) the same tokens.

    python benchmarks/tokenization/bench_tokenization.py --target-mb 50 --num-proc 2

writes results.json and results.md next to this script (machine, load, versions, figures).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from lmrepro.data.encode import tokenize_to_shards
from lmrepro.data.readers import iter_texts
from lmrepro.data.synthetic import generate_corpus
from lmrepro.data.tokenizer import load_tokenizer, train_bpe
from lmrepro.data.tokenizer_import import import_tokenizer

HERE = Path(__file__).resolve().parent
BYTES_PER_DOCUMENT = 139  # the synthetic generator's average JSONL line


def make_corpus(work: Path, target_mb: float) -> Path:
    num_documents = int(target_mb * 1e6 / BYTES_PER_DOCUMENT)
    generate_corpus(
        work / "raw",
        seed=1234,
        num_train_documents=num_documents,
        num_heldout_documents=10,
        num_mc_examples=4,
    )
    return work / "raw" / "train.jsonl"


def join_documents(corpus: Path, join: int, out: Path) -> Path:
    """The same text as documents of `join` synthetic stories each (web pages are ~1000 tokens, not 25)."""
    texts = list(iter_texts([corpus]))
    with out.open("w") as f:
        for start in range(0, len(texts), join):
            f.write(json.dumps({"text": "\n\n".join(texts[start : start + join])}) + "\n")
    return out


def make_tokenizers(work: Path, corpus: Path, vocab_size: int) -> dict[str, Path]:
    """A BPE trained on the start of the corpus (HF path) and the same merges as tiktoken ranks."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    sample = work / "sample.jsonl"
    with corpus.open() as src, sample.open("w") as dst:
        for _, line in zip(range(50_000), src, strict=False):
            dst.write(line)
    hf_dir = train_bpe([sample], vocab_size, work / "hf")
    vocab = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["vocab"]
    to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
    ranks = sorted(
        (rank, bytes(to_byte[c] for c in token))
        for token, rank in vocab.items()
        if not token.startswith("<|")  # the BPE's own special tokens; tiktoken adds Llama-3's
    )
    lines = [f"{base64.b64encode(token).decode()} {i}" for i, (_, token) in enumerate(ranks)]
    (work / "llama3").mkdir()
    (work / "llama3" / "tokenizer.model").write_text("\n".join(lines) + "\n")
    tiktoken_dir = work / "tiktoken"
    import_tokenizer({"kind": "tiktoken", "path": str(work / "llama3")}, tiktoken_dir, name="bench")
    return {"hf": hf_dir, "tiktoken": tiktoken_dir}


def baseline(folder: Path, texts: list[str]) -> tuple[int, float]:
    """Plain single-process loop: one encode call per document, nothing else."""
    tok = load_tokenizer(folder)
    if tok.kind == "tiktoken":
        encode = tok._enc.encode_ordinary
    else:
        backend = tok._tok

        def encode(text: str) -> list[int]:
            return backend.encode(text, add_special_tokens=False).ids

    started = time.perf_counter()
    num_tokens = sum(len(encode(t)) for t in texts)
    return num_tokens, time.perf_counter() - started


def pipeline(folder: Path, corpus: Path, out: Path, num_proc: int) -> tuple[int, float]:
    started = time.perf_counter()
    result = tokenize_to_shards([corpus], folder, out, num_proc=num_proc, piece_bytes=4 << 20)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    # Text tokens only: the BOS and EOS added per document are not work the plain loop does.
    return result["num_tokens"] - 2 * result["num_documents"], elapsed


def machine() -> dict:
    cpu = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tokenizers": version("tokenizers"),
        "tiktoken": version("tiktoken"),
    }


def measure(
    corpus: Path, folders: dict[str, Path], join: int, num_proc: int, work: Path, repeats: int
) -> dict:
    """Tokens/s of each engine and method, the best of `repeats` runs (the machine is shared: noise is
    other people's jobs, and the best run is the one least disturbed)."""
    texts = list(iter_texts([corpus]))
    rows = []
    for engine, folder in folders.items():
        row: dict = {"engine": engine}
        for _ in range(repeats):
            base_tokens, base_s = baseline(folder, texts)
            row["baseline_tokens"] = base_tokens
            row["baseline_tokens_per_s"] = max(row.get("baseline_tokens_per_s", 0), base_tokens / base_s)
            for procs in sorted({1, num_proc}):
                tokens, seconds = pipeline(folder, corpus, work / "shards", procs)
                assert tokens == base_tokens, (engine, tokens, base_tokens)  # the same work was done
                key = f"pipeline_{procs}proc_tokens_per_s"
                row[key] = max(row.get(key, 0), tokens / seconds)
        for procs in sorted({1, num_proc}):
            row[f"pipeline_{procs}proc_ratio"] = (
                row[f"pipeline_{procs}proc_tokens_per_s"] / row["baseline_tokens_per_s"]
            )
        rows.append(row)
        print(json.dumps({"join": join, **row}), flush=True)
    size = {"mb": corpus.stat().st_size / 1e6, "documents": len(texts), "stories_per_document": join}
    return {"corpus": size, "tokens_per_document": rows[0]["baseline_tokens"] / len(texts), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target-mb", type=float, default=50.0, help="corpus size in MB of JSONL")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1, help="processes of the pipeline")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the best one counts")
    parser.add_argument(
        "--joins", type=int, nargs="+", default=[1, 40], help="synthetic stories per document, per run"
    )
    parser.add_argument("--out", default=str(HERE), help="where results.json/results.md go")
    args = parser.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the baseline is one thread, like each pipeline process

    work = Path(tempfile.mkdtemp(prefix="lmrepro-bench-tok-"))
    try:
        load_before = os.getloadavg()
        stories = make_corpus(work, args.target_mb)
        folders = make_tokenizers(work, stories, args.vocab_size)
        runs = []
        for join in args.joins:
            corpus = stories if join == 1 else join_documents(stories, join, work / f"joined-{join}.jsonl")
            runs.append(measure(corpus, folders, join, args.num_proc, work, args.repeats))
        result = {
            "machine": machine(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "vocab_size": args.vocab_size,
            "num_proc": args.num_proc,
            "target_mb": args.target_mb,
            "repeats": args.repeats,
            "runs": runs,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "results.md").write_text(render_markdown(result))
    print((out / "results.md").read_text())


def render_markdown(result: dict) -> str:
    m = result["machine"]
    n = result["num_proc"]
    lines = [
        "# Tokenization throughput",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; {m['platform']}; Python {m['python']}, tokenizers "
        f"{m['tokenizers']}, tiktoken {m['tiktoken']}. Load average (1 min) before/after: "
        f"{result['load_average_before'][0]:.2f} / {result['load_average_after'][0]:.2f} (a shared machine).",
        "",
        f"Tokenizers: a byte-level BPE of {result['vocab_size']} tokens trained on the corpus (HF",
        "tokenizer.json) and the same merges as a Llama-3 style tiktoken tokenizer.model. Tokens/s of text",
        "tokens (not the BOS/EOS the step adds), wall clock, the best of "
        f"{result['repeats']} runs; ratio = tokenize step / plain loop.",
        "",
    ]
    for run in result["runs"]:
        c = run["corpus"]
        lines += [
            f"## {c['mb']:.1f} MB of JSONL: {c['documents']} documents of {c['stories_per_document']} "
            f"synthetic stories ({run['tokens_per_document']:.0f} tokens per document)",
            "",
            f"| engine | plain `encode` loop, 1 process | tokenize step, 1 process | ratio | "
            f"tokenize step, {n} processes | ratio |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in run["rows"]:
            one, many = r["pipeline_1proc_tokens_per_s"], r[f"pipeline_{n}proc_tokens_per_s"]
            lines.append(
                f"| {r['engine']} | {r['baseline_tokens_per_s']:,.0f} | {one:,.0f} | "
                f"{r['pipeline_1proc_ratio']:.2f}× | {many:,.0f} | {r[f'pipeline_{n}proc_ratio']:.2f}× |"
            )
        lines.append("")
    lines += [
        "The tokenize step is measured end to end: reading and parsing JSONL, encoding, writing shards",
        "with checksums and index.json, starting the worker processes. The plain loop only calls `encode`",
        "once per document on texts already in memory (`tokenizers.Tokenizer.encode`, tiktoken's",
        "`encode_ordinary`).",
        "",
        f"Run: `nice -n 10 python benchmarks/tokenization/bench_tokenization.py --target-mb "
        f"{result['target_mb']:g} --num-proc {n}`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
