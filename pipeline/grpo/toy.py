"""A toy Megatron-core GPT (integer tokens, no tokenizer) for fast unit tests of the policy and trainer.

The real runs build their model from a Hugging Face directory (`pipeline.models.megatron_bridge`); tests of
the GRPO machinery only need *a* Megatron GPTModel that trains on CPU in milliseconds. Its "HF export" is
its own state dict, so weight refits into the toy sampler (tests/grpo) round-trip exactly.
"""
from __future__ import annotations

import torch

TOY_DEFAULTS = dict(vocab_size=32, hidden_size=32, num_layers=2, num_attention_heads=4, max_sequence_length=64)


def build_toy_gpt(tp: int = 1, pp: int = 1, dtype: torch.dtype = torch.float32, seed: int = 1234, **sizes):
    """A GPTModel with the local (non-TE) layer spec; call after model-parallel init."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    if pp != 1:
        raise ValueError("the toy GPT supports pipeline_model_parallel_size=1 only")
    s = {**TOY_DEFAULTS, **sizes}
    cfg = TransformerConfig(
        num_layers=s["num_layers"], hidden_size=s["hidden_size"], num_attention_heads=s["num_attention_heads"],
        tensor_model_parallel_size=tp, use_cpu_initialization=True, params_dtype=dtype, pipeline_dtype=dtype,
        hidden_dropout=0.0, attention_dropout=0.0, normalization="RMSNorm",
    )
    torch.manual_seed(seed)  # identical initial weights in every process that builds it
    model = GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                     vocab_size=s["vocab_size"], max_sequence_length=s["max_sequence_length"],
                     position_embedding_type="learned_absolute", share_embeddings_and_output_weights=False)
    return model


def export_toy_state_dict(model) -> dict[str, torch.Tensor]:
    """The toy model's 'HF' export: its own tensors (TP=1 only), without Megatron's extra-state entries."""
    return {k: v.detach() for k, v in model.state_dict().items()
            if isinstance(v, torch.Tensor) and not k.endswith("_extra_state")}
