"""Fused element-wise pieces of the GPT layer and of the log-prob head, for GPUs without Transformer Engine.

Measured on one H100 (docs/benchmarks.md): with flash attention in place, Megatron-core's local layer spec still
spent ~60% of a training step's GPU time outside matmuls and attention, in chains of small element-wise kernels
(RMSNorm as pow/mean/rsqrt/mul in fp32, unfused RoPE, autocast casts, the fp32 log-softmax over 152k logits).
Each function here is one such chain written as plain torch code; on CUDA it runs through `torch.compile`
(one generated kernel forward, one or two backward), on CPU it runs eagerly with the same math, which is how
the tests check it against Megatron's own modules.

Dtypes: inputs are upcast to fp32 inside; the output is the autocast dtype when autocast is on (the next op
is a bf16 matmul anyway), else the input's dtype.
"""

from __future__ import annotations

import os

import torch

# SLURM_GRPO_COMPILE=0 turns compilation off (eager everywhere): a switch for debugging, not for speed.
_COMPILE = os.environ.get("SLURM_GRPO_COMPILE", "1") != "0"
_compiled: dict = {}


def _maybe_compiled(fn, tensor: torch.Tensor):
    if not (_COMPILE and tensor.is_cuda):
        return fn
    if fn not in _compiled:
        import torch._dynamo

        # one graph per (feature size, dtypes, grad mode): a dozen for the norms. Past dynamo's default limit of 8
        # a function silently falls back to eager, which measured 15% slower on an H100.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _compiled[fn] = torch.compile(fn, dynamic=None)
    return _compiled[fn]


def _dynamic_tokens(*tensors: torch.Tensor, dims: tuple[int, ...] = (0,)) -> None:
    """Token dimensions vary from call to call: compile them symbolic once instead of one graph per length."""
    if not (_COMPILE and tensors[0].is_cuda):
        return
    import torch._dynamo

    for t in tensors:
        for d in dims:
            torch._dynamo.maybe_mark_dynamic(t, d)


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype of x's device when autocast is on there, else x's dtype."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _run(fn, x: torch.Tensor, *args):
    """fn (compiled on CUDA) with autocast off: the functions manage their own dtypes."""
    with torch.autocast(x.device.type, enabled=False):
        return _maybe_compiled(fn, x)(x, *args)


# ---------------------------------------------------------------------------------------------------------------
# RMSNorm


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(out_dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    _dynamic_tokens(x, dims=tuple(range(x.dim() - 1)))  # [s, b, (heads,) features]: read in place, strided
    return _run(_rms_norm, x, weight, float(eps), output_dtype(x))


class FusedRMSNorm(torch.nn.Module):
    """Megatron norm-module signature (config, hidden_size, eps); a `weight` parameter like torch.nn.RMSNorm, so
    checkpoints and the HF mapping are unchanged."""

    def __init__(
        self,
        config,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "RMSNorm",
    ):
        super().__init__()
        if config.normalization != "RMSNorm" or config.layernorm_zero_centered_gamma:
            raise NotImplementedError("FusedRMSNorm: only plain RMSNorm (no zero-centred gamma)")
        if config.sequence_parallel:
            raise NotImplementedError("FusedRMSNorm: sequence parallelism is not supported")
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


# ---------------------------------------------------------------------------------------------------------------
# Rotary position embedding (non-interleaved halves, as Qwen/Llama and Megatron's default)


def _rope(t: torch.Tensor, freqs: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    tf = t.float()
    x1, x2 = tf.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (tf * torch.cos(freqs) + rotated * torch.sin(freqs)).to(out_dtype)


def apply_rope(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """t: [s, b, heads, d]; freqs: Megatron's rotary angles [s, 1, 1, d] (fp32). Same result as Megatron's
    unfused `_apply_rotary_pos_emb_bshd` (mscale 1, full rotary dimension)."""
    if freqs.shape[-1] != t.shape[-1]:
        raise NotImplementedError(f"apply_rope: partial rotary ({freqs.shape[-1]} of {t.shape[-1]} dims)")
    freqs = freqs.float()
    _dynamic_tokens(t, dims=(0, 1))
    _dynamic_tokens(freqs)
    return _run(_rope, t, freqs, output_dtype(t))


# ---------------------------------------------------------------------------------------------------------------
# Token log-probs from logits without a full fp32 copy


def _masked_scaled(logits: torch.Tensor, vocab_size: int, temperature: float) -> torch.Tensor:
    x = logits.float() / temperature
    if vocab_size < x.shape[-1]:  # padded vocabulary entries never count
        ids = torch.arange(x.shape[-1], device=x.device)
        x = x.masked_fill(ids >= vocab_size, float("-inf"))
    return x


def _lse_and_target(logits, targets, vocab_size: int, temperature: float):
    x = _masked_scaled(logits, vocab_size, temperature)
    return torch.logsumexp(x, dim=-1), x.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _logits_grad(logits, targets, lse, grad, vocab_size: int, temperature: float):
    x = _masked_scaled(logits, vocab_size, temperature)
    probs = torch.exp(x - lse.unsqueeze(-1))
    onehot = (torch.arange(x.shape[-1], device=x.device) == targets.unsqueeze(-1)).float()
    return ((onehot - probs) * (grad / temperature).unsqueeze(-1)).to(logits.dtype)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(logits / T)[target] over 2-D logits [N, V]; keeps only the logits and a per-row logsumexp
    for backward (no [N, V] fp32 tensors are stored)."""

    @staticmethod
    def forward(ctx, logits, targets, vocab_size: int, temperature: float):
        _dynamic_tokens(logits, targets)
        with torch.autocast(logits.device.type, enabled=False):
            lse, picked = _maybe_compiled(_lse_and_target, logits)(logits, targets, vocab_size, temperature)
        ctx.save_for_backward(logits, targets, lse)
        ctx.vocab_size, ctx.temperature = vocab_size, temperature
        return picked - lse

    @staticmethod
    def backward(ctx, grad):
        logits, targets, lse = ctx.saved_tensors
        grad = grad.float()
        _dynamic_tokens(logits, targets, lse, grad)
        with torch.autocast(logits.device.type, enabled=False):
            grad_logits = _maybe_compiled(_logits_grad, logits)(
                logits, targets, lse, grad, ctx.vocab_size, ctx.temperature
            )
        return grad_logits, None, None, None


def fused_token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """log p(targets) under softmax(logits / temperature) restricted to the first `vocab_size` entries.

    logits [..., V] in any float dtype (bf16 stays bf16 in memory), targets [...]; returns fp32 [...],
    differentiable. Pass contiguous logits (e.g. the whole [B, S, V] with a padded last target, then drop the last
    position): a slice such as `logits[:, :-1]` is copied once here, and its backward fills a full-size zero
    tensor."""
    vocab = logits.shape[-1] if vocab_size is None else int(vocab_size)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(
            f"fused_token_logprobs: targets {tuple(targets.shape)} do not match logits {tuple(logits.shape)}"
        )
    flat = logits.reshape(-1, logits.shape[-1])
    out = _TokenLogprobs.apply(flat, targets.reshape(-1), vocab, float(temperature))
    return out.view(targets.shape)
