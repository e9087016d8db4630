"""Hugging Face NemotronH <-> Megatron-core MambaModel: config, weights, TP sharding, export.

Called by `megatron_bridge.build_megatron_model` / `load_hf_weights` / `export_hf_state_dict` for
`model_type: nemotron_h`. Names, HF (transformers' in-memory `model.` prefix; `save_pretrained`, NVIDIA's
checkpoints and our export write `backbone.`, both are read) -> Megatron (`decoder.layers.N.` per layer):

  embeddings.weight                 embedding.word_embeddings.weight           (vocab padded to a multiple of TP)
  layers.N.norm.weight              'M': norm.weight  '*': input_layernorm.weight  '-': pre_mlp_layernorm.weight
  layers.N.mixer.in_proj.weight     mixer.in_proj.weight     rows [z; x; B; C; dt]; TP rank r: its own
                                                              [z_r; x_r; B_r; C_r; dt_r] (whole heads and groups)
  layers.N.mixer.conv1d.{weight,bias}  mixer.conv1d.*        channels [x; B; C]; rank r: [x_r; B_r; C_r]
  layers.N.mixer.{dt_bias,A_log,D}  mixer.*                  split by heads
  layers.N.mixer.norm.weight        mixer.norm.weight        split by groups
  layers.N.mixer.out_proj.weight    mixer.out_proj.weight    split by columns
  layers.N.mixer.{q,k,v}_proj       self_attention.linear_qkv  grouped like the GPT bridge (`fuse_qkv`)
  layers.N.mixer.o_proj             self_attention.linear_proj
  layers.N.mixer.up_proj/down_proj  mlp.linear_fc1 / mlp.linear_fc2 (no gate: squared ReLU)
  norm_f.weight                     decoder.final_norm.weight
  lm_head.weight                    output_layer.weight
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trainer.models.hybrid_arch import MODEL_TYPE as MODEL_TYPE  # re-exported: the bridge's callers read them here
from trainer.models.hybrid_arch import NemotronHArch
from trainer.models.hybrid_arch import nemotron_h_arch as nemotron_h_arch


def megatron_config(arch: NemotronHArch, tp: int, pp: int, parallel: Mapping[str, Any], dtype: torch.dtype):
    """A Megatron `TransformerConfig` for the hybrid model (attention, MLP and Mamba sizes)."""
    from megatron.core.activations import squared_relu
    from megatron.core.transformer.transformer_config import TransformerConfig

    from trainer.models.layout import shared_config_settings

    if arch.num_kv_heads % tp:
        raise ValueError(f"tensor_model_parallel_size={tp} must divide num_key_value_heads={arch.num_kv_heads}")
    if arch.mamba_groups % tp:
        raise ValueError(
            f"tensor_model_parallel_size={tp} must divide the Mamba group count n_groups={arch.mamba_groups}"
        )
    if arch.num_layers % pp:
        raise ValueError(f"pipeline_model_parallel_size={pp} must divide the {arch.num_layers} layers")
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=False,
        activation_func=squared_relu,
        add_bias_linear=False,
        add_qkv_bias=False,
        qk_layernorm=False,
        mamba_state_dim=arch.ssm_state_size,
        mamba_head_dim=arch.mamba_head_dim,
        mamba_num_groups=arch.mamba_groups,
        mamba_num_heads=arch.mamba_heads,
        bias_activation_fusion=False,
        **shared_config_settings(tp, pp, dtype, parallel),
    )


def build_model(arch: NemotronHArch, tp: int, pp: int, dtype: torch.dtype, parallel: Mapping[str, Any]):
    """This rank's MambaModel (no weights loaded; `megatron_bridge.build_megatron_model` does the rest)."""
    from megatron.core import parallel_state
    from megatron.core.models.mamba.mamba_model import MambaModel

    from trainer.models.layout import padded_vocab_size
    from trainer.models.nemotron_h import nemotron_h_stack_spec

    config = megatron_config(arch, tp, pp, parallel, dtype)
    mixer_params = {
        "conv_kernel": arch.conv_kernel,
        "chunk_size": arch.chunk_size,
        "dt_limit": (arch.dt_min, arch.dt_max),
        "norm_eps": arch.norm_eps,
        "conv_bias": arch.use_conv_bias,
    }
    spec = nemotron_h_stack_spec(
        mixer_params, arch.norm_eps, parallel.get("attention_backend"), fused=parallel.get("fused_ops")
    )
    return MambaModel(
        config=config,
        mamba_stack_spec=spec,
        vocab_size=padded_vocab_size(arch.vocab_size, tp),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        hybrid_override_pattern=arch.pattern,
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="none",
    )


# ---------------------------------------------------------------------------------------------------------------
# Weights. The "full" Megatron tensor of a fused parameter is kept in HF order ([z; x; B; C; dt]); `shard` and
# `unshard` interleave it per TP rank.


def normalize_hf_names(hf: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """NVIDIA's checkpoints name the body `backbone.`; transformers names it `model.`."""
    return {("model." + k[len("backbone.") :] if k.startswith("backbone.") else k): v for k, v in hf.items()}


def _in_proj_sizes(arch: NemotronHArch) -> list[int]:
    gn = arch.mamba_groups * arch.ssm_state_size
    return [arch.d_inner, arch.d_inner, gn, gn, arch.mamba_heads]


def _conv_sizes(arch: NemotronHArch) -> list[int]:
    gn = arch.mamba_groups * arch.ssm_state_size
    return [arch.d_inner, gn, gn]


# Megatron suffix (inside decoder.layers.N.) -> (HF suffix inside model.layers.N., TP split dim or None)
_SIMPLE = {
    "mixer.dt_bias": ("mixer.dt_bias", 0),
    "mixer.A_log": ("mixer.A_log", 0),
    "mixer.D": ("mixer.D", 0),
    "mixer.norm.weight": ("mixer.norm.weight", 0),
    "mixer.out_proj.weight": ("mixer.out_proj.weight", 1),
    "mixer.in_proj.weight": ("mixer.in_proj.weight", 0),
    "mixer.conv1d.weight": ("mixer.conv1d.weight", 0),
    "mixer.conv1d.bias": ("mixer.conv1d.bias", 0),
    "norm.weight": ("norm.weight", None),
    "input_layernorm.weight": ("norm.weight", None),
    "pre_mlp_layernorm.weight": ("norm.weight", None),
    "self_attention.linear_proj.weight": ("mixer.o_proj.weight", 1),
    "mlp.linear_fc1.weight": ("mixer.up_proj.weight", 0),
    "mlp.linear_fc2.weight": ("mixer.down_proj.weight", 1),
}
_FUSED_SECTIONS = {
    "mixer.in_proj.weight": _in_proj_sizes,
    "mixer.conv1d.weight": _conv_sizes,
    "mixer.conv1d.bias": _conv_sizes,
}


def _suffix(name: str) -> str:
    return name.split(".", 3)[3] if name.startswith("decoder.layers.") else name


def tp_split_dim(name: str) -> int | None:
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        return 0
    suffix = _suffix(name)
    if suffix == "self_attention.linear_qkv.weight":
        return 0
    if name.startswith("decoder.layers.") and suffix in _SIMPLE:
        return _SIMPLE[suffix][1]
    return None


def full_megatron_tensor(name: str, hf: Mapping[str, torch.Tensor], arch: NemotronHArch, tp: int) -> torch.Tensor:
    from trainer.models.layout import fuse_qkv, padded_vocab_size

    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        source = (
            "model.embeddings.weight" if name.startswith("embedding") or arch.tie_word_embeddings else "lm_head.weight"
        )
        weight = hf[source]
        padded = padded_vocab_size(arch.vocab_size, tp)
        if padded > weight.shape[0]:
            weight = torch.cat([weight, weight.new_zeros(padded - weight.shape[0], weight.shape[1])])
        return weight
    if name == "decoder.final_norm.weight":
        return hf["model.norm_f.weight"]
    _, _, index, suffix = name.split(".", 3)
    prefix = f"model.layers.{index}."
    if suffix == "self_attention.linear_qkv.weight":
        q, k, v = (hf[f"{prefix}mixer.{p}_proj.weight"] for p in "qkv")
        return fuse_qkv(q, k, v, arch)
    if suffix in _SIMPLE:
        return hf[prefix + _SIMPLE[suffix][0]]
    raise KeyError(f"no Hugging Face source for Megatron parameter '{name}'")


def shard(name: str, full: torch.Tensor, tp: int, rank: int, arch: NemotronHArch) -> torch.Tensor:
    dim = tp_split_dim(name)
    if dim is None or tp == 1:
        return full
    sections = _FUSED_SECTIONS.get(_suffix(name))
    if sections is not None:  # each component split by rank, the rank's pieces concatenated
        return torch.cat([part.chunk(tp, dim=0)[rank] for part in full.split(sections(arch), dim=0)])
    return full.chunk(tp, dim=dim)[rank]


def unshard(name: str, shards: list[torch.Tensor], arch: NemotronHArch) -> torch.Tensor:
    dim = tp_split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    sections = _FUSED_SECTIONS.get(_suffix(name))
    if sections is not None:
        tp = len(shards)
        local = [size // tp for size in sections(arch)]
        pieces = [s.split(local, dim=0) for s in shards]
        return torch.cat([pieces[r][c] for c in range(len(local)) for r in range(tp)])
    return torch.cat(shards, dim=dim)


def hf_tensors_from_megatron(name: str, full: torch.Tensor, arch: NemotronHArch) -> dict[str, torch.Tensor]:
    """HF tensors of one full Megatron tensor, named as transformers' `save_pretrained` and NVIDIA's checkpoints
    name them (`backbone.`, which vLLM reads too)."""
    return {
        ("backbone." + k[len("model.") :] if k.startswith("model.") else k): v
        for k, v in _model_tensors_from_megatron(name, full, arch).items()
    }


def _model_tensors_from_megatron(name: str, full: torch.Tensor, arch: NemotronHArch) -> dict[str, torch.Tensor]:
    from trainer.models.layout import split_qkv

    if name == "embedding.word_embeddings.weight":
        return {"model.embeddings.weight": full[: arch.vocab_size]}
    if name == "output_layer.weight":
        return {} if arch.tie_word_embeddings else {"lm_head.weight": full[: arch.vocab_size]}
    if name == "decoder.final_norm.weight":
        return {"model.norm_f.weight": full}
    _, _, index, suffix = name.split(".", 3)
    prefix = f"model.layers.{index}."
    if suffix == "self_attention.linear_qkv.weight":
        q, k, v = split_qkv(full, arch)
        return {f"{prefix}mixer.q_proj.weight": q, f"{prefix}mixer.k_proj.weight": k, f"{prefix}mixer.v_proj.weight": v}
    if suffix in _SIMPLE:
        return {prefix + _SIMPLE[suffix][0]: full}
    raise KeyError(f"no Hugging Face name for Megatron parameter '{name}'")
