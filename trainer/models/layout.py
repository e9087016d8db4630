"""Tensor layouts shared by the Megatron bridges (GPT: megatron_bridge.py, NemotronH: nemotron_h_bridge.py):
the grouped fused QKV of Megatron's attention and the vocabulary padded to the TP size."""

from __future__ import annotations

from typing import Protocol

import torch


def padded_vocab_size(vocab_size: int, tp: int) -> int:
    return -(-vocab_size // tp) * tp


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
