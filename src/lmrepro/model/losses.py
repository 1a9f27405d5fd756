"""Fused output projection + cross-entropy, computed in chunks of tokens.

With a 128k vocabulary the logits of one micro-batch (4 × 4096 tokens) are 2.1 G values: 4.2 GB in bf16,
8.4 GB once upcast to fp32 for the softmax, and autograd keeps them for backward. Here the logits of
one chunk at a time are formed, turned into the loss *and* the gradients of the hidden states and of the
output weight right away, and dropped; backward only scales the stored gradients. Peak memory falls by
the size of the full logits and their gradient, the matmul FLOPs are unchanged.

Targets equal to ``IGNORE_INDEX`` (-100, as in ``F.cross_entropy``: the unmasked positions of a masked-LM
batch) add nothing to the loss and get a zero gradient. With all targets valid the arithmetic is exactly
the one without ignoring (selecting a value and multiplying by the same scale), so causal runs are
bitwise unchanged on CPU.
Token-weighted cross-entropy (gpt-neuro's `training.token_weights`: one weight per vocabulary id, applied to
the target) is normalised over the whole global batch: sum(w[target] * ce) / sum(w[target]), with the
denominator summed over every micro-batch and data-parallel rank before the first backward. Torch's
`cross_entropy(weight=…)` divides each micro-batch by its own weight sum, so its mean of micro-batch means
depends on how the batch is split; this does not (GAS 4 = GAS 1, 2 ranks = 1 up to summation order).
"""

from __future__ import annotations

from pathlib import Path

import torch

IGNORE_INDEX = -100


def _chunk_step(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: float):
    """Loss sum of one chunk of tokens, the gradient of its hidden states and of its logits (both already
    multiplied by `scale`).

    The logits' gradient (softmax − one-hot) · scale is one elementwise expression, written once in the
    compute dtype: compiled, the logsumexp and it are a single kernel over the logits. (An in-place
    scatter of the −1 at the targets splits that into an fp32 write plus a second pass to scale and cast:
    1.3% of a Llama-3.2-1B step and 1 GiB of peak memory on an H200.)
    """
    logits = (hidden @ weight.t()).float()  # [c, vocab]
    lse = torch.logsumexp(logits, dim=-1)  # [c]
    valid = targets != IGNORE_INDEX  # [c]
    target_logits = logits.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1)  # [c]
    loss_sum = torch.where(valid, lse - target_logits, 0.0).sum()
    vocab_ids = torch.arange(logits.shape[1], device=logits.device)
    one_hot = (vocab_ids[None, :] == targets[:, None]).to(logits.dtype)  # IGNORE_INDEX matches no id
    row_scale = torch.where(valid, scale, 0.0).to(logits.dtype)[:, None]  # [c, 1]
    grad_logits = ((torch.exp(logits - lse[:, None]) - one_hot) * row_scale).to(hidden.dtype)
    return loss_sum, grad_logits @ weight, grad_logits  # loss, d hidden [c, d], d logits [c, vocab]


def _add_weight_grad(grad_weight: torch.Tensor, grad_logits: torch.Tensor, hidden: torch.Tensor) -> None:
    """grad_weight (fp32) += grad_logits.T @ hidden. On CUDA the GEMM accumulates into grad_weight in
    fp32 itself (out_dtype), instead of writing a bf16 product that a separate pass adds (1.4% of a
    Llama-3.2-1B step on an H100, and no bf16 rounding of each chunk's contribution)."""
    if grad_weight.is_cuda and grad_logits.dtype != torch.float32:
        torch.addmm(grad_weight, grad_logits.t(), hidden, out_dtype=torch.float32, out=grad_weight)
    else:
        grad_weight += (grad_logits.t() @ hidden).float()


def _weighted_chunk_step(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, target_weights: torch.Tensor, scale
):
    """_chunk_step with a weight per token: (weighted loss sum, plain loss sum, d hidden, d logits)."""
    logits = (hidden @ weight.t()).float()  # [c, vocab]
    lse = torch.logsumexp(logits, dim=-1)  # [c]
    ce = lse - logits.gather(1, targets[:, None]).squeeze(1)  # [c]
    vocab_ids = torch.arange(logits.shape[1], device=logits.device)
    one_hot = (vocab_ids[None, :] == targets[:, None]).to(logits.dtype)
    row_scale = (target_weights * scale)[:, None]
    grad_logits = ((torch.exp(logits - lse[:, None]) - one_hot) * row_scale).to(hidden.dtype)
    return (target_weights * ce).sum(), ce.sum(), grad_logits @ weight, grad_logits


_compiled_chunk_step = None


def compile_chunk_step() -> None:
    """Use a torch.compile'd chunk step (fuses the softmax-gradient elementwise work on GPUs)."""
    global _compiled_chunk_step
    _compiled_chunk_step = torch.compile(_chunk_step, fullgraph=True, dynamic=False)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int, compute_dtype: torch.dtype, normaliser):
        step = _compiled_chunk_step or _chunk_step
        n = hidden.shape[0] if normaliser is None else normaliser
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
            grad_hidden = torch.empty_like(h)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], chunk_tokens):
                chunk = slice(start, min(start + chunk_tokens, hidden.shape[0]))
                loss_sum, grad_h, grad_logits = step(h[chunk], w, targets[chunk], 1.0 / n)
                loss += loss_sum
                grad_hidden[chunk] = grad_h
                _add_weight_grad(grad_weight, grad_logits, h[chunk])
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grads = (grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype)
        return *grads, None, None, None, None


class _WeightedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, target_weights, normaliser, chunk_tokens, compute_dtype):
        n = hidden.shape[0]
        scale = 1.0 / normaliser
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
            grad_hidden = torch.empty_like(h)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            weighted = torch.zeros((), dtype=torch.float32, device=hidden.device)
            plain = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, n, chunk_tokens):
                chunk = slice(start, min(start + chunk_tokens, n))
                out = _weighted_chunk_step(h[chunk], w, targets[chunk], target_weights[chunk], scale)
                weighted += out[0]
                plain += out[1]
                grad_hidden[chunk] = out[2]
                _add_weight_grad(grad_weight, out[3], h[chunk])
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(plain)
        return weighted * scale, plain

    @staticmethod
    def backward(ctx, grad_loss, grad_plain):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grads = (grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype)
        return *grads, None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int = 4096,
    normaliser: float | None = None,
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T` against `targets`, without materialising all logits.

    hidden [N, dim], weight [vocab, dim], targets [N] int64 (IGNORE_INDEX: no loss, no gradient). Returns
    the sum over the targets divided by ``normaliser``; None: by N, the mean when no target is ignored (a
    masked-LM step passes its global masked-token count instead). Computes in the autocast dtype when
    autocast is on (as nn.Linear would), else in the hidden states' dtype; the softmax is always fp32.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_tokens, compute_dtype, normaliser)


def weighted_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    target_weights: torch.Tensor,
    normaliser: float | torch.Tensor,
    chunk_tokens: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum(target_weights * ce) / normaliser, sum(ce) detached) of `hidden @ weight.T`, chunk by chunk.

    `target_weights` [N] is the weight of each target (token_weights[targets]); `normaliser` is the sum of
    the target weights over the whole global batch (every micro-batch and data-parallel rank), so that the
    losses of the micro-batches add up to the global weighted mean. The plain sum gives the unweighted loss
    per token beside it.
    """
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    else:
        compute_dtype = hidden.dtype
    # a device tensor, so the trainer never waits for the GPU to learn the normaliser
    normaliser = torch.as_tensor(normaliser, dtype=torch.float32, device=hidden.device)
    return _WeightedLinearCrossEntropy.apply(
        hidden, weight, targets, target_weights.float(), normaliser, chunk_tokens, compute_dtype
    )


def load_token_weights(path: str | Path, vocab_size: int) -> torch.Tensor:
    """training.token_weights: a 1-D float tensor of length vocab_size, saved with torch.save and loaded
    with weights_only=True; finite and >= 0. Errors name the file and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training.token_weights: {path} does not exist")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle of another object, a truncated file, a foreign format
        raise ValueError(f"{path}: not a tensor saved with torch.save ({type(e).__name__}: {e})") from None
    expected = f"a 1-D float tensor of length {vocab_size} (model.vocab_size)"
    if not isinstance(weights, torch.Tensor):
        raise ValueError(f"{path}: holds a {type(weights).__name__}, expected {expected}")
    if not weights.is_floating_point():
        raise ValueError(f"{path}: dtype {weights.dtype}, expected {expected}")
    if weights.shape != (vocab_size,):
        raise ValueError(f"{path}: shape {tuple(weights.shape)}, expected {expected}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"{path}: weights must be finite and >= 0")
    return weights.float()
