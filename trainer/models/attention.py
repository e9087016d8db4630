"""Fused attention for Megatron-core without Transformer Engine.

Megatron-core's local layer spec computes attention unfused: it materialises the [b, heads, s, s] score matrix,
softmaxes it and multiplies by V. At 4096 tokens that costs most of a training step's time and tens of GiB.
Transformer Engine (the fused path Megatron normally uses) is not available everywhere we run, so this module
supplies a core-attention module over `torch.nn.functional.scaled_dot_product_attention`, which dispatches to
flash / cuDNN / memory-efficient kernels on GPUs (and to a fused kernel on CPU), handles causal masking without
a mask tensor and grouped-query attention without repeating K/V.

`gpt_layer_spec(qk_layernorm, backend)` is the local spec with its core attention swapped; `backend` comes from
`policy.megatron_cfg.attention_backend` (`sdpa` | `local` | `auto`: sdpa on CUDA, local on CPU). With `fused`
(default: on CUDA) the spec also uses the fused element-wise ops of `fused_ops.py`: RMSNorm for the layer and
q/k norms, and RoPE applied inside the core attention (`RopeInCoreSelfAttention` hands the rotary angles over
instead of letting Megatron apply its unfused RoPE; the order, q/k norm then RoPE, is unchanged).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.module import MegatronModule

from trainer.models.fused_ops import FusedRMSNorm, apply_rope

ATTENTION_BACKENDS = ("auto", "sdpa", "local")
# Which SDPA kernels may run ("auto": let torch choose). Names of torch.nn.attention.SDPBackend members.
SDPA_KERNELS = {
    "auto": None,
    "flash": "FLASH_ATTENTION",
    "cudnn": "CUDNN_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}


def resolve_attention_backend(name: str | None) -> str:
    """`auto`/None -> `sdpa` when CUDA is available, else `local` (Megatron's own unfused attention)."""
    name = "auto" if name is None else str(name).lower()
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"policy.megatron_cfg.attention_backend={name!r}: use one of {ATTENTION_BACKENDS}")
    if name == "auto":
        return "sdpa" if torch.cuda.is_available() else "local"
    return name


_EXPLICIT_MASK = contextvars.ContextVar("explicit_attention_mask", default=False)


@contextmanager
def explicit_attention_mask():
    """Within it, SDPACoreAttention applies the attention mask it is given even in causal layers (whose mask it
    otherwise never reads): packed sequences (`trainer.models.packing`) need their block mask."""
    token = _EXPLICIT_MASK.set(True)
    try:
        yield
    finally:
        _EXPLICIT_MASK.reset(token)


_SEGMENTS = contextvars.ContextVar("segment_attention", default=None)


@contextmanager
def segment_attention(batches):
    """Within it, SDPACoreAttention attends over a packed sequence segment by segment (`batches`: the
    `trainer.models.packing.SegmentBatch`es of its layout) instead of through the dense block mask: the same
    result, without scoring the pairs the mask forbids."""
    token = _SEGMENTS.set(tuple(batches) or None)
    try:
        yield
    finally:
        _SEGMENTS.reset(token)


def _segmented_sdpa(attend, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batches) -> torch.Tensor:
    """Attention of one packed sequence ([1, heads, T, d] views) as batched calls over its segments."""
    if q.shape[0] != 1:
        raise ValueError(f"segment attention takes one packed sequence, got a batch of {q.shape[0]}")
    q, k, v = q[0], k[0], v[0]
    out = q.new_zeros(q.shape)
    for batch in batches:
        # [heads, n, L, d] -> [n, heads, L, d]
        qs, ks, vs = (
            t[:, index].transpose(0, 1) for t, index in ((q, batch.q_index), (k, batch.k_index), (v, batch.k_index))
        )
        got = attend(qs, ks, vs, allowed=batch.allowed)
        got = got.transpose(0, 1).reshape(q.shape[0], -1, q.shape[2]).index_select(1, batch.take)
        out = out.index_copy(1, batch.dest, got)
    return out.unsqueeze(0)


class SDPACoreAttention(MegatronModule):
    """Drop-in for Megatron's `DotProductAttention` (same constructor and forward signature).

    Inputs are Megatron's [s, b, heads, head_dim] query and [s, b, groups, head_dim] key/value; the output is
    [s, b, heads * head_dim]. Causal mask type -> `is_causal=True` (the mask tensor is not read, as Megatron's
    fused causal softmax does not read it either); other mask types use the boolean mask (True = masked).
    """

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        kernel: str = "auto",
    ):
        super().__init__(config=config)
        from megatron.core.process_groups_config import ProcessGroupCollection
        from megatron.core.utils import divide

        if config.context_parallel_size != 1:
            raise NotImplementedError("SDPACoreAttention does not support context parallelism")
        if getattr(config, "softmax_type", "vanilla") != "vanilla":
            raise NotImplementedError(f"SDPACoreAttention: softmax_type={config.softmax_type!r} is not supported")
        if getattr(config, "window_size", None) is not None:
            raise NotImplementedError("SDPACoreAttention: sliding-window attention is not supported")
        if kernel not in SDPA_KERNELS:
            raise ValueError(f"SDPA kernel {kernel!r}: use one of {tuple(SDPA_KERNELS)}")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp = pg_collection.tp.size()
        self.layer_number = max(1, layer_number)
        self.attn_mask_type = attn_mask_type
        self.heads = divide(config.num_attention_heads, tp)
        self.groups = divide(config.num_query_groups, tp)
        self.head_dim = divide(config.kv_channels * config.num_attention_heads, config.num_attention_heads)
        # (apply_query_key_layer_scaling divides by the layer number and its softmax multiplies back: no net change)
        self.softmax_scale = 1.0 / math.sqrt(self.head_dim) if softmax_scale is None else softmax_scale
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.kernel = kernel
        self.rope_freqs = None  # (q angles, k angles), set per call by RopeInCoreSelfAttention

    def _kernels(self):
        name = SDPA_KERNELS[self.kernel]
        if name is None:
            return None
        from torch.nn.attention import SDPBackend

        return [getattr(SDPBackend, name)]

    def _attend(self, q, k, v, attn_mask=None, is_causal=False):
        """SDPA with this layer's scale, dropout, grouped-query flag and kernel choice."""
        kwargs = dict(
            attn_mask=attn_mask,
            is_causal=is_causal,
            scale=self.softmax_scale,
            dropout_p=self.dropout_p if self.training else 0.0,
        )
        if self.groups != self.heads:
            kwargs["enable_gqa"] = True
        kernels = self._kernels()
        if kernels is None:
            return F.scaled_dot_product_attention(q, k, v, **kwargs)
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(kernels):
            return F.scaled_dot_product_attention(q, k, v, **kwargs)

    def _mask(self, attention_mask, mask_type, seq_q: int, seq_k: int):
        """(SDPA's boolean mask or None, is_causal) for Megatron's mask (True = masked out) and mask type."""
        from megatron.core.transformer.enums import AttnMaskType

        if _EXPLICIT_MASK.get():
            if attention_mask is None:
                raise ValueError("explicit_attention_mask() is on but the forward was given no attention mask")
            return ~attention_mask, False
        if mask_type == AttnMaskType.causal:
            if seq_q != seq_k:
                raise NotImplementedError("SDPACoreAttention: causal attention needs equal query/key lengths")
            return None, True
        return (None if attention_mask is None else ~attention_mask), False

    def forward(
        self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None
    ):
        if packed_seq_params is not None:
            raise NotImplementedError("SDPACoreAttention: packed sequences (THD) are not supported")
        if attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention: attention_bias is not supported")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        if self.rope_freqs is not None:
            query, key = apply_rope(query, self.rope_freqs[0]), apply_rope(key, self.rope_freqs[1])
        seq_q, batch = query.shape[0], query.shape[1]
        # [s, b, h, d] -> [b, h, s, d] as views: the kernels take strided inputs, and the output then comes back
        # in [s, b, h, d] memory order, so the final reshape is free.
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        segments = _SEGMENTS.get()
        if segments is not None:
            out = _segmented_sdpa(lambda *qkv, allowed: self._attend(*qkv, attn_mask=allowed), q, k, v, segments)
        else:
            mask, causal = self._mask(attention_mask, mask_type, seq_q, key.shape[0])
            out = self._attend(q, k, v, attn_mask=mask, is_causal=causal)
        # [b, h, s, d] -> [s, b, h * d]
        return out.permute(2, 0, 1, 3).reshape(seq_q, batch, self.heads * self.head_dim)


class RopeInCoreSelfAttention(SelfAttention):
    """SelfAttention whose core attention (SDPACoreAttention) applies RoPE with the fused kernel.

    Megatron applies RoPE between the q/k norms and the core attention, unfused; here the angles are handed to
    the core attention, which applies them first thing, so the computation is the same. Packed sequences and
    inference contexts keep Megatron's own path."""

    def forward(self, hidden_states, *args, rotary_pos_emb=None, **kwargs):
        own = (
            rotary_pos_emb is not None
            and kwargs.get("packed_seq_params") is None
            and kwargs.get("inference_context") is None
            and not self.config.rotary_interleaved
        )
        if not own:
            return super().forward(hidden_states, *args, rotary_pos_emb=rotary_pos_emb, **kwargs)
        pair = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb, rotary_pos_emb)
        self.core_attention.rope_freqs = pair
        try:
            return super().forward(hidden_states, *args, rotary_pos_emb=None, **kwargs)
        finally:
            self.core_attention.rope_freqs = None


def default_fused() -> bool:
    """Fused element-wise ops by default where they are compiled (CUDA); eager elsewhere would gain nothing."""
    return torch.cuda.is_available()


def gpt_layer_spec(qk_layernorm: bool, backend: str | None = "auto", kernel: str = "auto", fused: bool | None = None):
    """Megatron's local GPT layer spec (RMSNorm) with the core attention chosen by `backend`; with `fused`
    (default on CUDA, sdpa only) also the fused RMSNorm and RoPE."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    spec = get_gpt_layer_local_spec(qk_layernorm=qk_layernorm, normalization="RMSNorm")
    if resolve_attention_backend(backend) == "local":
        return spec
    fused = default_fused() if fused is None else fused
    attention = spec.submodules.self_attention
    core = functools.partial(SDPACoreAttention, kernel=kernel)
    attn_sub = dataclasses.replace(attention.submodules, core_attention=core)
    layer_sub = spec.submodules
    if fused:
        if qk_layernorm:
            attn_sub = dataclasses.replace(attn_sub, q_layernorm=FusedRMSNorm, k_layernorm=FusedRMSNorm)
        attention = dataclasses.replace(attention, module=RopeInCoreSelfAttention)
        layer_sub = dataclasses.replace(layer_sub, input_layernorm=FusedRMSNorm, pre_mlp_layernorm=FusedRMSNorm)
    attention = dataclasses.replace(attention, submodules=attn_sub)
    return dataclasses.replace(spec, submodules=dataclasses.replace(layer_sub, self_attention=attention))
