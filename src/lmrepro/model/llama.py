"""A Llama-3-family decoder-only transformer in one readable file.

Structure and parameter names follow Meta's reference code and torchtitan, so that checkpoints map
one-to-one onto ``consolidated.pth`` (Meta) and, through :mod:`lmrepro.checkpoint.hf`, onto Hugging Face
``LlamaForCausalLM``:

    tok_embeddings.weight                       [vocab, dim]
    layers.{i}.attention_norm.weight            [dim]
    layers.{i}.attention.wq.weight              [n_heads * head_dim, dim]
    layers.{i}.attention.wk.weight              [n_kv_heads * head_dim, dim]
    layers.{i}.attention.wv.weight              [n_kv_heads * head_dim, dim]
    layers.{i}.attention.wo.weight              [dim, n_heads * head_dim]
    layers.{i}.ffn_norm.weight                  [dim]
    layers.{i}.feed_forward.w1.weight           [ffn_dim, dim]   (gate)
    layers.{i}.feed_forward.w3.weight           [ffn_dim, dim]   (up)
    layers.{i}.feed_forward.w2.weight           [dim, ffn_dim]   (down)
    norm.weight                                 [dim]
    output.weight                               [vocab, dim]

Tied embeddings: ``output.weight`` *is* ``tok_embeddings.weight`` (the same ``nn.Parameter``), so
``state_dict()`` lists both keys backed by one storage, ``parameters()`` yields it once, and loading a
state dict that has both keys (equal values) works. Writers that refuse shared storage (safetensors) must
drop ``output.weight`` when ``tie_embeddings`` is set, as the HF export does.

The file contains no parallelism code. Tensor parallel shards wq/wk/wv/w1/w3 by rows and wo/w2 by
columns, so attention infers the *local* head count from tensor shapes, never from ``args.n_heads``.
``layers`` is a ``ModuleDict`` keyed "0".."n-1", which gives the checkpoint keys ``layers.{i}.…``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmrepro.model.args import ModelArgs, RopeScaling
from lmrepro.model.attention import AttentionKernel
from lmrepro.model.losses import linear_cross_entropy, weighted_linear_cross_entropy

# --------------------------------------------------------------------------------------------- RoPE


def apply_rope_scaling(freqs: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1 scaling: slow down low frequencies, keep high ones, blend in between.

    Wavelengths shorter than ``original / high_freq_factor`` are local patterns the model learnt well and
    stay untouched; those longer than ``original / low_freq_factor`` never completed a period during
    pretraining and are divided by ``factor`` (interpolated); the band between is blended smoothly.
    Same math as Meta's ``apply_scaling`` and transformers' ``_compute_llama3_parameters``.
    """
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = 2 * math.pi / freqs
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * freqs / scaling.factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / scaling.factor, blended)
    return torch.where(wavelen < high_freq_wavelen, freqs, scaled)


def precompute_freqs_cis(
    head_dim: int, end: int, theta: float, scaling: RopeScaling | None = None
) -> torch.Tensor:
    """e^{i * pos * freq} for every position < end and every pair of channels: complex64 [end, head_dim/2]."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim))  # [hd/2]
    if scaling is not None:
        freqs = apply_rope_scaling(freqs, scaling)
    t = torch.arange(end, dtype=torch.float32, device=freqs.device)  # [end]
    angles = torch.outer(t, freqs)  # [end, hd/2]
    return torch.polar(torch.ones_like(angles), angles)  # [end, hd/2] complex64


def apply_rotary_emb(
    xq: torch.Tensor, xk: torch.Tensor, freqs_cis: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q and k; channels (2j, 2j+1) form one complex number (Meta's interleaved layout).

    The rotation is written with real cos/sin arithmetic rather than complex multiplication: Inductor
    generates no code for complex operators, so the complex form runs as separate eager kernels, while
    this one fuses into the surrounding kernels (0.6% of a Llama-3.2-1B step on an H100). Computed in fp32
    because bf16 angles lose position information at long range.
    """
    bsz, seqlen, _, hd = xq.shape
    cos_sin = torch.view_as_real(freqs_cis[:seqlen]).view(1, seqlen, 1, hd // 2, 2)  # [1, s, 1, hd/2, 2]
    cos, sin = cos_sin[..., 0], cos_sin[..., 1]  # broadcast over b and heads

    def rotate(x: torch.Tensor) -> torch.Tensor:
        pairs = x.float().reshape(*x.shape[:-1], hd // 2, 2)  # [b, s, h, hd/2, 2]
        real, imag = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
        return rotated.flatten(3).type_as(x)  # [b, s, h, hd]

    return rotate(xq), rotate(xk)


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[b, s, hkv, hd] -> [b, s, hkv * n_rep, hd]: each kv head serves n_rep query heads (GQA)."""
    if n_rep == 1:
        return x
    bsz, seqlen, n_kv_heads, head_dim = x.shape
    return (
        x[:, :, :, None, :]
        .expand(bsz, seqlen, n_kv_heads, n_rep, head_dim)
        .reshape(bsz, seqlen, n_kv_heads * n_rep, head_dim)
    )


# ------------------------------------------------------------------------------------------- layers


def _trunc_normal_(weight: torch.Tensor, std: float) -> None:
    # Cut at 3 std so that no single outlier weight dominates at init.
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3 * std, b=3 * std)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, with the reduction in fp32 (bf16 sums of squares are too coarse)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)  # [..., dim]
        return normed.type_as(x) * self.weight


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.head_dim = args.head_dim
        self.causal = args.causal
        kv_dim = args.n_kv_heads * args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, kv_dim, bias=False)
        self.wv = nn.Linear(args.dim, kv_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        # None: PyTorch SDPA; else a kernel taking [b, s, heads, hd] with grouped k/v (model/attention.py)
        self.kernel: AttentionKernel | None = None

    def init_weights(self, out_std: float) -> None:
        for linear in (self.wq, self.wk, self.wv):
            _trunc_normal_(linear.weight, 0.02)
        _trunc_normal_(self.wo.weight, out_std)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        # Head counts come from the shapes (-1) so a tensor-parallel shard sees its local heads.
        xq = self.wq(x).view(bsz, seqlen, -1, self.head_dim)  # [b, s, hq, hd]
        xk = self.wk(x).view(bsz, seqlen, -1, self.head_dim)  # [b, s, hkv, hd]
        xv = self.wv(x).view(bsz, seqlen, -1, self.head_dim)  # [b, s, hkv, hd]
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)
        if self.kernel is not None:  # flash-attn: grouped k/v and [b, s, h, hd] as they are
            out = self.kernel(xq, xk, xv, self.causal)  # [b, s, hq, hd]
            return self.wo(out.reshape(bsz, seqlen, -1))

        n_rep = xq.shape[2] // xk.shape[2]
        xk = repeat_kv(xk, n_rep)  # [b, s, hq, hd]
        xv = repeat_kv(xv, n_rep)  # [b, s, hq, hd]

        # SDPA wants heads before sequence; it picks flash/efficient/math kernels by itself.
        out = F.scaled_dot_product_attention(
            xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2), is_causal=self.causal
        )  # [b, hq, s, hd]
        out = out.transpose(1, 2).reshape(bsz, seqlen, -1)  # [b, s, hq * hd]
        return self.wo(out)  # [b, s, dim]


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down

    def init_weights(self, out_std: float) -> None:
        _trunc_normal_(self.w1.weight, 0.02)
        _trunc_normal_(self.w3.weight, out_std)
        _trunc_normal_(self.w2.weight, out_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # [b, s, ffn] -> [b, s, dim]


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.attention = Attention(args)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.feed_forward = FeedForward(args.dim, args.ffn_dim)
        # Depth-scaled init (torchtitan's depth_init): deeper residual branches start smaller so the
        # residual stream's variance does not grow with depth.
        self.out_std = 0.02 / (2 * (layer_id + 1)) ** 0.5

    def init_weights(self) -> None:
        self.attention_norm.reset_parameters()
        self.ffn_norm.reset_parameters()
        self.attention.init_weights(self.out_std)
        self.feed_forward.init_weights(self.out_std)

    def forward(self, x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), freqs_cis)  # [b, s, dim]
        return h + self.feed_forward(self.ffn_norm(h))  # [b, s, dim]


# -------------------------------------------------------------------------------------------- model


class Transformer(nn.Module):
    """Built on a real device it initialises itself; built under ``torch.device("meta")`` it allocates
    nothing, and the caller runs ``to_empty(device=...)`` then :meth:`init_weights` (FSDP-style)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        if args.vocab_size <= 0:
            raise ValueError(f"ModelArgs.vocab_size must be set from the tokenizer, got {args.vocab_size}")
        self.args = args
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        # Non-persistent: derived from args, so it never lands in (or is expected from) a checkpoint.
        self.register_buffer("freqs_cis", self._precompute_freqs_cis(), persistent=False)
        # Under autocast without FSDP: False casts the embedding output to the compute dtype (below);
        # True keeps the residual stream in fp32, as torchtitan's one-GPU path (training.residual_dtype).
        self.residual_fp32 = False
        if self.tok_embeddings.weight.device.type != "meta":
            self.init_weights()

    def _precompute_freqs_cis(self) -> torch.Tensor:
        a = self.args
        return precompute_freqs_cis(a.head_dim, a.max_seq_len, a.rope_theta, a.rope_scaling)

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialise every parameter and the RoPE buffer; deterministic given torch's RNG state.

        Meant for ``Transformer(args)`` under ``torch.device("meta")`` + ``to_empty(device=...)``, after
        which parameters hold garbage and the buffer must be recomputed on a real device.
        """
        with torch.device(self.freqs_cis.device):
            self.freqs_cis = self._precompute_freqs_cis()
        if self.args.tie_embeddings:
            # to_empty() from meta creates a new tensor per module and so silently unties the weights.
            self.output.weight = self.tok_embeddings.weight
        nn.init.normal_(self.tok_embeddings.weight, mean=0.0, std=0.02)
        for layer in self.layers.values():
            layer.init_weights()
        self.norm.reset_parameters()
        if not self.args.tie_embeddings:
            # torchtitan: logits start with ~unit variance regardless of width.
            _trunc_normal_(self.output.weight, self.args.dim**-0.5)

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        normaliser: float | torch.Tensor | None = None,
        target_weights: torch.Tensor | None = None,
    ):
        """tokens [b, s] (int64) -> logits [b, s, vocab] in the parameters' dtype.

        With ``targets`` [b, s], returns the cross-entropy instead, fused with the output projection so the
        full logits are never materialised (see lmrepro.model.losses): the mean over the targets, or, with
        ``normaliser``, their sum (IGNORE_INDEX targets left out) divided by it (masked LM). With
        ``target_weights`` [b, s] too: (sum(w * ce) / normaliser, sum(ce)), the token-weighted loss share
        of this micro-batch and its plain loss sum.
        """
        if tokens.shape[1] > self.freqs_cis.shape[0]:
            raise ValueError(
                f"sequence length {tokens.shape[1]} exceeds max_seq_len {self.freqs_cis.shape[0]}"
            )
        if not self.freqs_cis.is_complex():
            raise ValueError(
                f"freqs_cis was cast to {self.freqs_cis.dtype} (Module.to(dtype) casts complex buffers too); "
                "use model.bfloat16()/half() or mixed precision, which keep it complex64"
            )
        h = self.tok_embeddings(tokens)  # [b, s, dim]
        if torch.is_autocast_enabled(h.device.type) and not self.residual_fp32:
            # The residual stream in the compute dtype, as under FSDP's mixed precision (whose bf16
            # embedding table yields bf16 hidden states), so one GPU computes what N GPUs compute; autocast
            # alone would keep it fp32 (the embedding lookup is no autocast op), doubling the bytes of
            # every residual add and norm (1.1% of a Llama-3.2-1B step on an H200).
            h = h.to(torch.get_autocast_dtype(h.device.type))
        for layer in self.layers.values():
            h = layer(h, self.freqs_cis)  # [b, s, dim]
        h = self.norm(h)
        if targets is not None and target_weights is not None:
            flat = h.flatten(0, 1)
            return weighted_linear_cross_entropy(
                flat, self.output.weight, targets.flatten(), target_weights.flatten(), normaliser
            )
        if targets is not None:
            flat = h.flatten(0, 1)
            return linear_cross_entropy(flat, self.output.weight, targets.flatten(), normaliser=normaliser)
        return self.output(h)  # [b, s, vocab]

    def set_attention_kernel(self, kernel: AttentionKernel | None) -> None:
        """Run every layer's attention through ``kernel`` (None: PyTorch SDPA)."""
        for layer in self.layers.values():
            layer.attention.kernel = kernel

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameter count; ``exclude_embeddings`` drops the token-embedding table.

        With tied embeddings the shared matrix is counted once, as the embedding, so it is excluded too.
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
        return n


def flops_per_token(args: ModelArgs, seq_len: int) -> int:
    """Training FLOPs per token: 6 * N + 12 * n_layers * dim * seq_len (PaLM appendix B, torchtitan).

    N counts the parameters that take part in matmuls: everything but the embedding lookup, *including*
    the output projection even when it is tied (the matmul happens either way). 6 = 2 (multiply-add) x 3
    (forward + backward for activations + backward for weights). The second term is attention's
    QK^T and AV matmuls, which have no parameters: 2 matmuls x 2 x 3 x seq_len x dim per layer, counted
    for the full (non-causal) square as PaLM and torchtitan do.
    """
    kv_dim = args.n_kv_heads * args.head_dim
    attention = args.dim * (args.dim + 2 * kv_dim) + args.dim * args.dim  # wq, wk, wv, wo
    ffn = 3 * args.dim * args.ffn_dim
    per_layer = attention + ffn + 2 * args.dim  # + two RMSNorm weights
    non_embedding = args.n_layers * per_layer + args.dim + args.vocab_size * args.dim  # + norm, output
    return 6 * non_embedding + 12 * args.n_layers * args.dim * seq_len
