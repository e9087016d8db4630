"""What the Megatron bridges (GPT: megatron_bridge.py, NemotronH: nemotron_h_bridge.py) share: the grouped fused
QKV of Megatron's attention, the vocabulary padded to the TP size, and the TransformerConfig settings that do not
depend on the architecture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


def shared_config_settings(tp: int, pp: int, dtype: torch.dtype, parallel: Mapping[str, Any]) -> dict[str, Any]:
    """TransformerConfig settings of every architecture: parallel sizes, dtypes, no dropout, weights made on the
    CPU without a random init (the checkpoint overwrites every one), the fusions that need Transformer Engine or
    Apex off, and per-layer recomputation where `activation_checkpointing` asks for it."""
    settings: dict[str, Any] = dict(
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        sequence_parallel=bool(parallel.get("sequence_parallel", False)) and tp > 1,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        use_cpu_initialization=True,
        perform_initialization=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=torch.cuda.is_available(),
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
    if parallel.get("activation_checkpointing"):
        settings.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    return settings


class HeadLayout(Protocol):
    """The attention sizes `fuse_qkv` / `split_qkv` read (HFArch, nemotron_h_bridge.NemotronHArch)."""

    @property
    def num_heads(self) -> int: ...
    @property
    def num_kv_heads(self) -> int: ...
    @property
    def head_dim(self) -> int: ...


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: HeadLayout) -> torch.Tensor:
    """HF q/k/v rows -> Megatron's grouped [q heads of group g; k_g; v_g] rows (works for weights and biases)."""
    groups, per_group, d = arch.num_kv_heads, arch.num_heads // arch.num_kv_heads, arch.head_dim
    rest = q.shape[1:]
    q = q.reshape(groups, per_group * d, *rest)
    k = k.reshape(groups, d, *rest)
    v = v.reshape(groups, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(groups * (per_group + 2) * d, *rest)


def split_qkv(qkv: torch.Tensor, arch: HeadLayout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, per_group, d = arch.num_kv_heads, arch.num_heads // arch.num_kv_heads, arch.head_dim
    rest = qkv.shape[1:]
    grouped = qkv.reshape(groups, (per_group + 2) * d, *rest)
    q, k, v = torch.split(grouped, [per_group * d, d, d], dim=1)
    return (q.reshape(groups * per_group * d, *rest), k.reshape(groups * d, *rest), v.reshape(groups * d, *rest))
