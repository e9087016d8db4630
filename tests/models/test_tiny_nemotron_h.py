"""The project-built tiny NemotronH: deterministic and cached, the tiny Qwen3's tokenizer and chat template, loads
in transformers and in the Megatron bridge with the same logits."""

from __future__ import annotations

import json

import pytest
import torch
from test_tiny import _corpus, _digest

from trainer.distributed import init_distributed
from trainer.models.hub import resolve_model
from trainer.models.megatron_bridge import build_megatron_model, forward_logits
from trainer.models.tiny import build_tiny_model, build_tiny_nemotron_h, tiny_nemotron_h_settings

SMALL = {
    "hidden_size": 128,
    "pattern": "M*-M-",
    "num_attention_heads": 2,
    "num_kv_heads": 1,
    "head_dim": 64,
    "intermediate_size": 256,
    "mamba_num_heads": 4,
    "mamba_head_dim": 32,
    "n_groups": 2,
    "ssm_state_size": 16,
    "chunk_size": 16,
    "vocab_size": 1024,
    "max_position_embeddings": 1024,
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_nemotron_h(tmp_path_factory.mktemp("tiny"), SMALL, _corpus(), seed=3)


def test_build_is_deterministic_and_cached(tmp_path, tiny_dir):
    assert tiny_dir.name.startswith("tiny-nemotron-h-")
    again = build_tiny_nemotron_h(tmp_path, SMALL, _corpus(), seed=3)
    assert _digest(again) == _digest(tiny_dir)
    stamp = (again / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_nemotron_h(tmp_path, SMALL, _corpus(), seed=3) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == stamp
    assert build_tiny_nemotron_h(tmp_path, SMALL, _corpus(), seed=4) != again


def test_config_is_the_hybrid_one(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["model_type"] == "nemotron_h"
    assert config["layers_block_type"] == ["linear_attention", "full_attention", "mlp", "linear_attention", "mlp"]
    assert config["mamba_ssm_cache_dtype"] == "float32" and config["tie_word_embeddings"] is False
    assert (config["mamba_num_heads"], config["mamba_head_dim"], config["n_groups"]) == (4, 32, 2)


def test_tokenizer_and_template_are_the_tiny_qwen3_ones(tmp_path, tiny_dir):
    from transformers import AutoTokenizer

    qwen_settings = {k: SMALL[k] for k in ("hidden_size", "num_attention_heads", "num_kv_heads", "head_dim")}
    qwen = build_tiny_model(tmp_path, {**qwen_settings, "num_layers": 1, "vocab_size": 1024}, _corpus(), seed=3)
    ours, theirs = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(qwen)
    messages = [{"role": "user", "content": "send the email to ana@atlas.com"}]
    tools = [{"type": "function", "function": {"name": "email_send_email", "parameters": {}}}]
    assert ours.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True) == (
        theirs.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    )
    assert ours.get_vocab() == theirs.get_vocab() and len(ours) == 1024


def test_megatron_model_matches_transformers(tiny_dir):
    from transformers import AutoModelForCausalLM

    init_distributed(tp=1, pp=1)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32).eval()
    model = build_megatron_model(tiny_dir, tp=1, pp=1)
    ids = torch.randint(0, 1024, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (forward_logits(model, ids) - hf(ids).logits).abs().max().item() < 1e-4


def test_resolve_model_builds_it(tmp_path):
    path = resolve_model("tiny-nemotron-h", tmp_path, corpus_fn=_corpus, tiny_cfg=SMALL, seed=3)
    assert path.name.startswith("tiny-nemotron-h-") and (path / "BUILD_COMPLETE").exists()


def test_settings_are_checked():
    with pytest.raises(ValueError, match="num_layers"):
        tiny_nemotron_h_settings({"num_layers": 4})  # the pattern gives the layers
    with pytest.raises(ValueError, match="pattern"):
        tiny_nemotron_h_settings({"pattern": "**--"})
