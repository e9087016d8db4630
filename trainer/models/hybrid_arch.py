"""A Hugging Face NemotronH config read into the sizes our code needs, without torch: the Megatron bridge
(`nemotron_h_bridge`) builds and maps weights from it, and the placement planner (`trainer.placement`, run on
login nodes) counts parameters and activations from it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MODEL_TYPE = "nemotron_h"
_PATTERN_SYMBOLS = {"linear_attention": "M", "mamba": "M", "full_attention": "*", "attention": "*", "mlp": "-"}


@dataclass(frozen=True)
class NemotronHArch:
    """What the weight mapping and the Megatron config need to know about an HF NemotronH."""

    model_type: str
    pattern: str  # one symbol per layer: M mamba, * attention, - MLP
    hidden_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    mamba_heads: int
    mamba_head_dim: int
    mamba_groups: int
    ssm_state_size: int
    conv_kernel: int
    chunk_size: int
    dt_min: float  # the lower clamp of dt (transformers clamps at time_step_min)
    dt_max: float
    use_conv_bias: bool
    norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    @property
    def num_layers(self) -> int:
        return len(self.pattern)

    @property
    def d_inner(self) -> int:
        return self.mamba_heads * self.mamba_head_dim

    @property
    def hybrid(self) -> bool:
        """Whether any layer carries a recurrent state (Mamba): packing rows into one sequence is then wrong."""
        return "M" in self.pattern


def nemotron_h_arch(hf_config: Any) -> NemotronHArch:
    """Read an HF NemotronH config (object or dict; `hybrid_override_pattern` or `layers_block_type`)."""

    def get(key: str, default: Any = None) -> Any:
        return hf_config.get(key, default) if isinstance(hf_config, Mapping) else getattr(hf_config, key, default)

    def need(key: str) -> Any:
        value = get(key)
        if value is None:
            raise ValueError(f"the NemotronH config has no '{key}'")
        return value

    pattern = get("hybrid_override_pattern")
    if not pattern:
        types = get("layers_block_type") or get("layer_types")
        if not types:
            raise ValueError("the NemotronH config has neither 'hybrid_override_pattern' nor 'layers_block_type'")
        unknown = [t for t in types if t not in _PATTERN_SYMBOLS]
        if unknown:
            raise NotImplementedError(f"NemotronH layer types {sorted(set(unknown))} are not supported (MoE is not)")
        pattern = "".join(_PATTERN_SYMBOLS[t] for t in types)
    if set(pattern) - set("M*-"):
        raise NotImplementedError(f"hybrid_override_pattern {pattern!r}: only 'M', '*' and '-' layers are supported")
    if get("mlp_hidden_act", "relu2") != "relu2":
        raise NotImplementedError(f"mlp_hidden_act '{get('mlp_hidden_act')}' (only relu2 is supported)")
    if get("mamba_hidden_act", "silu") != "silu":
        raise NotImplementedError(f"mamba_hidden_act '{get('mamba_hidden_act')}' (only silu is supported)")
    for flag in ("use_bias", "mamba_proj_bias", "attention_bias", "mlp_bias"):
        if get(flag, False):
            raise NotImplementedError(f"NemotronH with {flag}=true is not supported")
    if get("num_nextn_predict_layers", 0):
        raise NotImplementedError("NemotronH multi-token prediction layers are not supported")
    hidden, heads = int(need("hidden_size")), int(need("num_attention_heads"))
    mamba_head_dim = int(need("mamba_head_dim"))
    mamba_heads = int(get("mamba_num_heads") or hidden * int(get("expand", 2)) // mamba_head_dim)
    return NemotronHArch(
        model_type=MODEL_TYPE,
        pattern=pattern,
        hidden_size=hidden,
        vocab_size=int(need("vocab_size")),
        num_heads=heads,
        num_kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden // heads),
        ffn_hidden_size=int(need("intermediate_size")),
        mamba_heads=mamba_heads,
        mamba_head_dim=mamba_head_dim,
        mamba_groups=int(get("n_groups", get("mamba_n_groups", 8))),
        ssm_state_size=int(need("ssm_state_size")),
        conv_kernel=int(get("conv_kernel", 4)),
        chunk_size=int(get("chunk_size", 128)),
        dt_min=float(get("time_step_min", 0.001)),
        dt_max=math.inf,  # transformers' mixer clamps dt to (time_step_min, inf), whatever time_step_limit says
        use_conv_bias=bool(get("use_conv_bias", True)),
        norm_eps=float(get("layer_norm_epsilon", 1e-5)),
        max_position_embeddings=int(get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
    )
