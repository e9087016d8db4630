"""The NemotronH GPU benchmark's FLOP count (bench/nemotron_h_gpu_bench.py): its matmul part is 2 FLOPs for every
weight of every linear layer the model really has (transformers' NemotronH at toy size, the 9B's pattern)."""

from __future__ import annotations

import torch

from bench.nemotron_h_gpu_bench import PATTERN_9B, forward_flops_per_token, shape_for, write_model


def test_matmul_flops_are_two_per_linear_weight(tmp_path):
    shape = shape_for(16, tiny=True)
    write_model(tmp_path / "hf", shape, "cpu")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    parts = forward_flops_per_token(shape, seq=64)
    matmuls = parts["mamba_projections"] + parts["attention_projections"] + parts["mlp"] + parts["lm_head"]
    assert matmuls == 2 * linear
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert shape["hybrid_override_pattern"] == PATTERN_9B[:16] and PATTERN_9B.count("*") == 4
