"""Where one lmrepro training step spends its GPU time, and what candidate changes gain.

Same shape and step as bench.py (Llama-3.2-1B untied, bf16 autocast, batch 4 × seq 4096, per-block
compile, fused linear + cross-entropy, fused AdamW, gradient clipping), run in one process without the
trainer's data/checkpoint machinery, so that variants can be swapped between compilations:

* an SDPA microbenchmark: each attention backend at the model's shapes, forward + backward;
* each variant (a set of candidate changes patched into the model) timed over steady-state steps;
* a torch.profiler breakdown of the first and the last variant by kernel category.

    python benchmarks/throughput/profile_step.py --out DIR [--steps 15] [--variants base,cudnn,...]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmrepro.config import OptimizerConfig
from lmrepro.model import llama, losses
from lmrepro.model.attention import sdpa_backend as attention_backend
from lmrepro.model.flavors import model_args
from lmrepro.train.optim import build_optimizer, clip_and_step
from lmrepro.train.parallel import parallelize

SEQ_LEN, BATCH = 4096, 4

# ------------------------------------------------------------------------------- candidate patches


def attention_forward(self, x, freqs_cis, fuse_qkv=False, gqa=False):
    bsz, seqlen, _ = x.shape
    if fuse_qkv:
        w = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight])
        q_dim, kv_dim = self.wq.weight.shape[0], self.wk.weight.shape[0]
        xq, xk, xv = F.linear(x, w).split([q_dim, kv_dim, kv_dim], dim=-1)
    else:
        xq, xk, xv = self.wq(x), self.wk(x), self.wv(x)
    xq = xq.view(bsz, seqlen, -1, self.head_dim)
    xk = xk.view(bsz, seqlen, -1, self.head_dim)
    xv = xv.view(bsz, seqlen, -1, self.head_dim)
    xq, xk = llama.apply_rotary_emb(xq, xk, freqs_cis)
    n_rep = xq.shape[2] // xk.shape[2]
    if gqa:
        out = F.scaled_dot_product_attention(
            xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2), is_causal=True, enable_gqa=True
        )
    else:
        xk, xv = llama.repeat_kv(xk, n_rep), llama.repeat_kv(xv, n_rep)
        out = F.scaled_dot_product_attention(
            xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2), is_causal=True
        )
    return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


def ffn_fused(self, x):
    w = torch.cat([self.w1.weight, self.w3.weight])
    gate, up = F.linear(x, w).chunk(2, dim=-1)
    return self.w2(F.silu(gate) * up)


def chunk_step_scatter(hidden, weight, targets, scale: float):
    """The loss chunk step before: the −1 at the targets scattered in place into the fp32 softmax."""
    logits = (hidden @ weight.t()).float()
    lse = torch.logsumexp(logits, dim=-1)
    target_logits = logits.gather(1, targets[:, None]).squeeze(1)
    grad_logits = torch.exp(logits - lse[:, None])
    grad_logits.scatter_add_(1, targets[:, None], torch.full_like(target_logits[:, None], -1.0))
    grad_logits = (grad_logits * scale).to(hidden.dtype)
    return (lse - target_logits).sum(), grad_logits @ weight, grad_logits


ORIGINAL = {
    "attn": llama.Attention.forward,
    "ffn": llama.FeedForward.forward,
    "chunk_step": losses._chunk_step,
}


def patch(opts: set[str]) -> None:
    fuse, gqa = "fuse" in opts, "gqa" in opts
    if fuse or gqa:
        llama.Attention.forward = lambda self, x, f: attention_forward(self, x, f, fuse, gqa)
    else:
        llama.Attention.forward = ORIGINAL["attn"]
    llama.FeedForward.forward = ffn_fused if fuse else ORIGINAL["ffn"]
    losses._chunk_step = chunk_step_scatter if "loss_scatter" in opts else ORIGINAL["chunk_step"]


VARIANTS = {  # name: (attention backend, model patches, host sync every step, other knobs)
    "base": ("auto", set(), False, {}),
    "sync": ("auto", set(), True, {}),  # the trainer before: loss and grad norm read every step
    "fuse": ("auto", {"fuse"}, False, {}),  # wq/wk/wv and w1/w3 concatenated into single matmuls
    "gqa": ("auto", {"gqa"}, False, {}),  # SDPA's enable_gqa instead of repeat_kv
    "loss_scatter": ("auto", {"loss_scatter"}, False, {}),  # the loss's chunk step before (in-place scatter)
    "fp32_residual": ("auto", set(), False, {"fp32_residual": True}),  # autocast's fp32 residual stream
    "flash": ("flash", set(), False, {}),  # FlashAttention-2 instead of cuDNN (auto's choice on H100)
    "coord": ("auto", set(), False, {"coordinate_descent_tuning": True}),
    "chunk8k": ("auto", set(), False, {"chunk_tokens": 8192}),
    "reduce_overhead": ("auto", set(), False, {"compile_mode": "reduce-overhead"}),
    "combo": ("auto", set(), False, {"combo_kernels": True}),
    # foreach AdamW whose clip + step is one torch.compile'd function (clipping fused into the update)
    "compiled_optimizer": ("auto", set(), False, {"compiled_optimizer": True}),
    "compiled_optimizer_coord": (
        "auto",
        set(),
        False,
        {"compiled_optimizer": True, "coordinate_descent_tuning": True},
    ),
}


# ------------------------------------------------------------------------------------- measurement


def sdpa_microbench() -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []
    q = torch.randn(BATCH, 32, SEQ_LEN, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    kv = [torch.randn(BATCH, 8, SEQ_LEN, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
          for _ in range(2)]  # fmt: skip
    flops = 3.5 * 4 * BATCH * SEQ_LEN**2 * 32 * 64 / 2  # causal, fwd + bwd (2.5x fwd)
    for backend in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        for gqa in (False, True):
            try:
                with sdpa_kernel(getattr(SDPBackend, backend)):

                    def step(gqa: bool = gqa) -> None:
                        k, v = kv
                        if not gqa:
                            k, v = k.repeat_interleave(4, 1), v.repeat_interleave(4, 1)
                        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
                        out.sum().backward()

                    for _ in range(3):
                        step()
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    for _ in range(10):
                        step()
                    torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / 10 * 1e3
                rows.append({"backend": backend, "gqa": gqa, "ms": ms, "tflops": flops / ms / 1e9})
            except Exception as e:  # a backend that rejects these shapes is a result too
                rows.append({"backend": backend, "gqa": gqa, "error": str(e).splitlines()[0][:200]})
            print(rows[-1], flush=True)
    return rows


def build(opts: set[str], knobs: dict):
    patch(opts)
    torch._dynamo.reset()
    torch._inductor.config.coordinate_descent_tuning = knobs.get("coordinate_descent_tuning", False)
    torch._inductor.config.combo_kernels = knobs.get("combo_kernels", False)
    losses.linear_cross_entropy.__kwdefaults__ = None
    losses.linear_cross_entropy.__defaults__ = (knobs.get("chunk_tokens", 4096), None)
    args = model_args("llama3.2-1B", 128256, tie_embeddings=False, max_seq_len=SEQ_LEN)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = llama.Transformer(args)
    parallelize(model, None, torch.bfloat16, compile=True, compile_mode=knobs.get("compile_mode", "default"))
    model.to_empty(device="cuda")
    model.init_weights()
    if knobs.get("fp32_residual"):  # the first block's input back in fp32, as plain autocast leaves it
        model.layers["0"].register_forward_pre_hook(lambda module, args: (args[0].float(), *args[1:]))
    if not knobs.get("compiled_optimizer"):
        return model, build_optimizer(model, OptimizerConfig(), fused=True)
    optimizer = build_optimizer(model, OptimizerConfig(), fused=False)
    params = list(model.parameters())

    @torch.compile
    def clip_step() -> torch.Tensor:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
        torch.nn.utils.clip_grads_with_norm_(params, 1.0, norm, foreach=True)
        optimizer.step()
        return norm

    optimizer.compiled_clip_step = clip_step
    return model, optimizer


def train_step(model, optimizer, x, y, backend: str, sync: bool):
    with attention_backend(backend), torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x, y)
    loss.backward()
    if hasattr(optimizer, "compiled_clip_step"):
        norm = optimizer.compiled_clip_step()
        optimizer.zero_grad(set_to_none=True)
    else:
        norm = clip_and_step(optimizer, list(model.parameters()), 1.0)
    if sync:  # loss and grad norm as floats every step
        float(loss), float(norm)
    return loss


CATEGORIES = (
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("matmul", ("gemm", "xmma", "cutlass", "nvjet", "sm90", "cublas")),
    ("optimizer", ("adam",)),
    ("fused elementwise (triton)", ("triton",)),
)


def categorize(name: str) -> str:
    low = name.lower()
    for category, keys in CATEGORIES:
        if any(k in low for k in keys):
            return category
    return "other"


def profile(model, optimizer, x, y, backend, sync, out: Path, name: str) -> dict:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            train_step(model, optimizer, x, y, backend, sync)
        torch.cuda.synchronize()
    events = prof.key_averages()
    table = events.table(sort_by="self_device_time_total", row_limit=40, max_name_column_width=90)
    (out / f"profile-{name}.txt").write_text(table)
    totals: dict[str, float] = {}
    for e in events:
        t = getattr(e, "self_device_time_total", 0.0)
        if t > 0:
            cat = categorize(e.key)
            totals[cat] = totals.get(cat, 0.0) + t / 3 / 1e3  # ms per step
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def run_variant(name: str, steps: int, out: Path, do_profile: bool) -> dict:
    backend, opts, sync, knobs = VARIANTS[name]
    model, optimizer = build(opts, knobs)
    torch.manual_seed(1)
    x = torch.randint(0, 512, (BATCH, SEQ_LEN), device="cuda")
    y = torch.randint(0, 512, (BATCH, SEQ_LEN), device="cuda")
    started = time.perf_counter()
    losses = [float(train_step(model, optimizer, x, y, backend, True)) for _ in range(5)]
    compile_s = time.perf_counter() - started
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, x, y, backend, sync)
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / steps
    result = {
        "backend": backend,
        "patches": sorted(opts),
        "sync_every_step": sync,
        "knobs": knobs,
        "compile_and_first_5_steps_s": compile_s,
        "step_ms": step_s * 1e3,
        "tokens_per_s": BATCH * SEQ_LEN / step_s,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "first_losses": losses,
    }
    if do_profile:
        result["profile_ms_per_step"] = profile(model, optimizer, x, y, backend, sync, out, name)
    del model, optimizer
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", default="base", help="variants to profile, comma-separated")
    parser.add_argument("--skip-sdpa", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"machine": torch.cuda.get_device_name(0), "torch": torch.__version__, "variants": {}}
    if not args.skip_sdpa:
        results["sdpa"] = sdpa_microbench()
    for name in args.variants.split(","):
        try:
            results["variants"][name] = run_variant(name, args.steps, out, name in args.profile.split(","))
        except Exception as e:
            results["variants"][name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            torch.cuda.empty_cache()
        print(name, json.dumps(results["variants"][name]), flush=True)
        (out / "profile_step.json").write_text(json.dumps(results, indent=2))
    base = results["variants"].get("base", {}).get("tokens_per_s")
    for name, r in results["variants"].items():
        if base and "tokens_per_s" in r:
            print(f"{name:18s} {r['tokens_per_s']:9.0f} tok/s  {r['tokens_per_s'] / base:.3f}x  "
                  f"{r['peak_reserved_gib']:.1f} GiB")  # fmt: skip


if __name__ == "__main__":
    main()
