"""Hugging Face (Qwen3 / Qwen2 / Llama) <-> Megatron-core GPTModel: config, weights, TP/PP sharding, export.

The policy trains a Megatron-core `GPTModel`; vLLM and the exported model speak Hugging Face names. This module
owns the mapping between the two layouts:

* q/k/v projections are fused into `linear_qkv`, laid out group by group (for each KV group: its query heads,
  then its key head, then its value head), so a tensor-parallel rank owns whole groups;
* gate/up projections are fused into `linear_fc1` as [gate; up] *per TP rank* (each rank's SwiGLU needs both
  halves of its own slice);
* Qwen3's per-head q_norm/k_norm are Megatron's qk layernorm; RMSNorm, RoPE theta and tied embeddings carry over;
* the vocabulary is padded to a multiple of the TP size (padded logits are masked in `token_logprobs`).

Only the local (non-Transformer-Engine) layer spec is used, so the same code runs on CPU and GPU; its core
attention is `torch.nn.functional.scaled_dot_product_attention` (flash/cuDNN kernels) when
`attention_backend` (policy.megatron_cfg) resolves to sdpa, the default on CUDA (see `attention.py`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from infra.io import atomic_directory
from trainer.models.layout import (  # fuse_qkv, padded_vocab_size, split_qkv: callers import them from here too
    fuse_qkv,
    padded_vocab_size,
    shared_config_settings,
    split_qkv,
)

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
NEMOTRON_H = "nemotron_h"  # the hybrid Mamba-2 / attention model: trainer/models/nemotron_h_bridge.py


@dataclass(frozen=True)
class HFArch:
    """What the weight mapping needs to know about a Hugging Face decoder."""

    model_type: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    qk_norm: bool
    qkv_bias: bool
    rope_scaling_factor: float | None = None


def hf_arch(hf_config: Any) -> HFArch:
    """Read an HF config (object or dict) into `HFArch`; unsupported architectures fail with the reason."""

    def get(key: str, default: Any = None) -> Any:
        return hf_config.get(key, default) if isinstance(hf_config, Mapping) else getattr(hf_config, key, default)

    def required_int(key: str) -> int:
        value = get(key)
        if value is None:
            raise ValueError(f"the HF config has no '{key}'")
        return int(value)

    model_type = get("model_type")
    if model_type == NEMOTRON_H:
        raise NotImplementedError(
            f"model_type '{NEMOTRON_H}' is not a GPT decoder: read it with nemotron_h_bridge.nemotron_h_arch "
            "(build_megatron_model does)"
        )
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise NotImplementedError(
            f"model_type '{model_type}' is not supported by the Megatron bridge "
            f"(supported: {SUPPORTED_MODEL_TYPES + (NEMOTRON_H,)})"
        )
    rope = dict(get("rope_parameters") or get("rope_scaling") or {})
    theta = rope.get("rope_theta", get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    scaling = None
    if rope_type == "llama3":
        # Megatron implements Llama-3.1 scaling with the published constants; refuse anything else.
        if (
            rope.get("low_freq_factor", 1.0),
            rope.get("high_freq_factor", 4.0),
            rope.get("original_max_position_embeddings", 8192),
        ) != (1.0, 4.0, 8192):
            raise NotImplementedError(f"llama3 rope scaling with non-default constants: {rope}")
        scaling = float(rope.get("factor", 8.0))
    elif rope_type != "default":
        raise NotImplementedError(f"rope type '{rope_type}' is not supported by the Megatron bridge")
    if get("hidden_act", "silu") != "silu":
        raise NotImplementedError(f"hidden_act '{get('hidden_act')}' (only silu/SwiGLU is supported)")
    heads, hidden_size = required_int("num_attention_heads"), required_int("hidden_size")
    return HFArch(
        model_type=model_type,
        num_layers=required_int("num_hidden_layers"),
        hidden_size=hidden_size,
        num_heads=heads,
        num_kv_heads=int(get("num_key_value_heads") or heads),
        head_dim=int(get("head_dim") or hidden_size // heads),
        ffn_hidden_size=required_int("intermediate_size"),
        vocab_size=required_int("vocab_size"),
        rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        max_position_embeddings=required_int("max_position_embeddings"),
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        qk_norm=model_type == "qwen3",
        qkv_bias=model_type == "qwen2" or bool(get("attention_bias", False)),
        rope_scaling_factor=scaling,
    )


def _parallel_sizes(parallel: Mapping[str, Any] | None) -> tuple[int, int]:
    parallel = dict(parallel or {})
    tp = int(parallel.get("tensor_model_parallel_size", parallel.get("tp", 1)))
    pp = int(parallel.get("pipeline_model_parallel_size", parallel.get("pp", 1)))
    return tp, pp


def megatron_config_from_hf(
    hf_config: Any, parallel: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32
):
    """A Megatron `TransformerConfig` equivalent to the HF config.

    `parallel` holds `tensor_model_parallel_size` / `pipeline_model_parallel_size` (e.g. `policy.megatron_cfg`),
    plus optional `sequence_parallel` and `activation_checkpointing` (`attention_backend` and `fused_ops` are
    read by `build_megatron_model`).
    """
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    arch = hf_arch(hf_config)
    tp, pp = _parallel_sizes(parallel)
    parallel = dict(parallel or {})
    if arch.num_kv_heads % tp:
        raise ValueError(f"tensor_model_parallel_size={tp} must divide num_key_value_heads={arch.num_kv_heads}")
    if arch.num_layers % pp:
        raise ValueError(f"pipeline_model_parallel_size={pp} must divide num_hidden_layers={arch.num_layers}")
    return TransformerConfig(
        num_layers=arch.num_layers,
        hidden_size=arch.hidden_size,
        num_attention_heads=arch.num_heads,
        num_query_groups=arch.num_kv_heads,
        kv_channels=arch.head_dim,
        ffn_hidden_size=arch.ffn_hidden_size,
        normalization="RMSNorm",
        layernorm_epsilon=arch.rms_norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=arch.qkv_bias,
        qk_layernorm=arch.qk_norm,
        bias_activation_fusion=torch.cuda.is_available(),  # SwiGLU through Megatron's torch.compile'd kernel on GPU
        **shared_config_settings(tp, pp, dtype, parallel),
    )


def build_megatron_model(
    hf_dir: str | Path,
    tp: int = 1,
    pp: int = 1,
    dtype: torch.dtype = torch.float32,
    parallel: Mapping[str, Any] | None = None,
    load_weights: bool = True,
):
    """A Megatron-core GPTModel for this rank holding the HF checkpoint's weights (its TP/PP shard).

    Needs `trainer.distributed.init_distributed(tp, pp)` first. The returned model carries `hf_arch` (HFArch)
    and `hf_vocab_size` attributes used by `export_hf_state_dict` and `token_logprobs`.
    """
    from megatron.core import parallel_state
    from megatron.core.models.gpt.gpt_model import GPTModel

    from trainer.models.attention import gpt_layer_spec

    hf_dir = Path(hf_dir)
    hf_config = json.loads((hf_dir / "config.json").read_text())
    if (
        parallel_state.get_tensor_model_parallel_world_size() != tp
        or parallel_state.get_pipeline_model_parallel_world_size() != pp
    ):
        raise RuntimeError(
            f"build_megatron_model(tp={tp}, pp={pp}) but the initialised model-parallel groups are "
            f"tp={parallel_state.get_tensor_model_parallel_world_size()}, "
            f"pp={parallel_state.get_pipeline_model_parallel_world_size()}"
        )
    if hf_config.get("model_type") == NEMOTRON_H:  # the hybrid Mamba model: MambaModel (nemotron_h_bridge.py)
        from trainer.models import nemotron_h_bridge

        hybrid = nemotron_h_bridge.nemotron_h_arch(hf_config)
        model = nemotron_h_bridge.build_model(hybrid, tp, pp, dtype, dict(parallel or {}))
        return _finish_model(model, hybrid, hf_dir, load_weights)
    arch = hf_arch(hf_config)
    config = megatron_config_from_hf(
        hf_config, {**dict(parallel or {}), "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp}, dtype
    )
    options = dict(parallel or {})
    spec = gpt_layer_spec(arch.qk_norm, options.get("attention_backend"), fused=options.get("fused_ops"))
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=padded_vocab_size(arch.vocab_size, tp),
        max_sequence_length=arch.max_position_embeddings,
        pre_process=parallel_state.is_pipeline_first_stage(),
        post_process=parallel_state.is_pipeline_last_stage(),
        parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_word_embeddings,
        position_embedding_type="rope",
        rotary_percent=1.0,
        rotary_base=int(arch.rope_theta),
        rope_scaling=arch.rope_scaling_factor is not None,
        rope_scaling_factor=arch.rope_scaling_factor or 8.0,
    )
    return _finish_model(model, arch, hf_dir, load_weights)


def _finish_model(model, arch, hf_dir: Path, load_weights: bool):
    """Attach the arch, mark the TP-sharded parameters, load the checkpoint, move to the GPU."""
    model.hf_arch = arch
    model.hf_vocab_size = arch.vocab_size
    mark_tensor_parallel_params(model)
    if load_weights:
        load_hf_weights(model, read_hf_state_dict(hf_dir))
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    return model


# ---------------------------------------------------------------------------------------------------------------
# Reading HF checkpoints


def read_hf_state_dict(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint directory (single file or sharded safetensors)."""
    from safetensors.torch import load_file

    hf_dir = Path(hf_dir)
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{hf_dir}: no *.safetensors weights (PyTorch .bin checkpoints are not supported)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    return state


# ---------------------------------------------------------------------------------------------------------------
# Layout helpers (full, unsharded tensors)


def _hf_layer(i: int) -> str:
    return f"model.layers.{i}."


# Megatron parameter suffix (inside decoder.layers.N.) -> (HF suffix, TP split dim or None)
_LAYER_SIMPLE = {
    "input_layernorm.weight": ("input_layernorm.weight", None),
    "pre_mlp_layernorm.weight": ("post_attention_layernorm.weight", None),
    "self_attention.q_layernorm.weight": ("self_attn.q_norm.weight", None),
    "self_attention.k_layernorm.weight": ("self_attn.k_norm.weight", None),
    "self_attention.linear_proj.weight": ("self_attn.o_proj.weight", 1),
    "mlp.linear_fc2.weight": ("mlp.down_proj.weight", 1),
}


def _full_megatron_tensor(name: str, hf: Mapping[str, torch.Tensor], arch: HFArch, tp: int) -> torch.Tensor:
    """The unsharded Megatron tensor `name` (global layer numbering) built from HF tensors."""
    if name == "embedding.word_embeddings.weight" or name == "output_layer.weight":
        source = (
            "model.embed_tokens.weight"
            if (name.startswith("embedding") or arch.tie_word_embeddings)
            else "lm_head.weight"
        )
        weight = hf[source]
        padded = padded_vocab_size(arch.vocab_size, tp)
        if padded > weight.shape[0]:
            weight = torch.cat([weight, weight.new_zeros(padded - weight.shape[0], weight.shape[1])])
        return weight
    if name == "decoder.final_layernorm.weight":
        return hf["model.norm.weight"]
    _, _, index, suffix = name.split(".", 3)
    prefix = _hf_layer(int(index))
    if suffix in _LAYER_SIMPLE:
        return hf[prefix + _LAYER_SIMPLE[suffix][0]]
    if suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        q, k, v = (hf[f"{prefix}self_attn.{p}_proj.{kind}"] for p in "qkv")
        return fuse_qkv(q, k, v, arch)
    if suffix == "mlp.linear_fc1.weight":
        return torch.cat([hf[prefix + "mlp.gate_proj.weight"], hf[prefix + "mlp.up_proj.weight"]])
    raise KeyError(f"no Hugging Face source for Megatron parameter '{name}'")


def _tp_split_dim(name: str) -> int | None:
    suffix = name.split(".", 3)[-1] if name.startswith("decoder.layers.") else name
    if suffix in _LAYER_SIMPLE:
        return _LAYER_SIMPLE[suffix][1]
    if (
        name in ("embedding.word_embeddings.weight", "output_layer.weight")
        or "linear_qkv" in name
        or suffix == "mlp.linear_fc1.weight"
    ):
        return 0
    return None  # norms: replicated


def _shard(name: str, full: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    dim = _tp_split_dim(name)
    if dim is None or tp == 1:
        return full
    if name.endswith("mlp.linear_fc1.weight"):  # [gate; up] per rank
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]])
    return full.chunk(tp, dim=dim)[rank]


def _unshard(name: str, shards: list[torch.Tensor]) -> torch.Tensor:
    dim = _tp_split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    if name.endswith("mlp.linear_fc1.weight"):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(shards, dim=dim)


@dataclass(frozen=True)
class _Layout:
    """An architecture's weight mapping: TP split dim, full tensor from HF, shard/unshard, HF tensors of a full
    Megatron tensor, and the renaming of checkpoint names read."""

    split_dim: Callable[[str], int | None]
    full_tensor: Callable[[str, Mapping[str, torch.Tensor], int], torch.Tensor]
    shard: Callable[[str, torch.Tensor, int, int], torch.Tensor]
    unshard: Callable[[str, list[torch.Tensor]], torch.Tensor]
    hf_tensors: Callable[[str, torch.Tensor], dict[str, torch.Tensor]]
    read_names: Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]] = lambda hf: hf


def _layout(arch) -> _Layout:
    if getattr(arch, "model_type", None) == NEMOTRON_H:
        from trainer.models import nemotron_h_bridge as nb

        return _Layout(
            nb.tp_split_dim,
            lambda name, hf, tp: nb.full_megatron_tensor(name, hf, arch, tp),
            lambda name, full, tp, rank: nb.shard(name, full, tp, rank, arch),
            lambda name, shards: nb.unshard(name, shards, arch),
            lambda name, full: nb.hf_tensors_from_megatron(name, full, arch),
            nb.normalize_hf_names,
        )
    return _Layout(
        _tp_split_dim,
        lambda name, hf, tp: _full_megatron_tensor(name, hf, arch, tp),
        _shard,
        _unshard,
        lambda name, full: _hf_tensors_from_megatron(name, full, arch),
    )


# ---------------------------------------------------------------------------------------------------------------
# Model <-> HF state dict


def unwrap(model):
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def mark_tensor_parallel_params(model) -> None:
    """Set Megatron's `tensor_model_parallel` / `partition_dim` attributes on the TP-sharded parameters.

    Megatron sets them only while it initialises the weights (`perform_initialization`), which we skip since every
    weight comes from the checkpoint. Without them `param_is_not_tensor_parallel_duplicate` takes every shard for
    a replica, and the grad norm under TP counted only TP rank 0's shards (and clipped by that)."""
    module = unwrap(model)
    split_dim = _layout(getattr(module, "hf_arch", None)).split_dim
    for local_name, param in module.named_parameters():
        dim = split_dim(_global_name(local_name, module))
        if dim is not None and not getattr(param, "tensor_model_parallel", False):
            param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, dim, 1


def _global_name(local_name: str, module) -> str:
    """Parameter name with the PP-stage-local layer index replaced by the global one."""
    if not local_name.startswith("decoder.layers."):
        return local_name
    _, _, index, suffix = local_name.split(".", 3)
    layer = module.decoder.layers[int(index)]
    return f"decoder.layers.{layer.layer_number - 1}.{suffix}"


@torch.no_grad()
def load_hf_weights(model, hf_state: Mapping[str, torch.Tensor]) -> None:
    """Copy HF tensors into this rank's shard of every Megatron parameter (all parameters must be covered)."""
    from megatron.core import parallel_state

    module = unwrap(model)
    layout = _layout(module.hf_arch)
    hf_state = layout.read_names(hf_state)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    for local_name, param in module.named_parameters():
        name = _global_name(local_name, module)
        shard = layout.shard(name, layout.full_tensor(name, hf_state, tp), tp, rank)
        if shard.shape != param.shape:
            raise ValueError(
                f"{name}: HF gives shape {tuple(shard.shape)} for this rank, Megatron expects {tuple(param.shape)}"
            )
        param.copy_(shard.to(param.dtype))


def _hf_tensors_from_megatron(name: str, full: torch.Tensor, arch: HFArch) -> dict[str, torch.Tensor]:
    if name == "embedding.word_embeddings.weight":
        return {"model.embed_tokens.weight": full[: arch.vocab_size]}
    if name == "output_layer.weight":
        return {} if arch.tie_word_embeddings else {"lm_head.weight": full[: arch.vocab_size]}
    if name == "decoder.final_layernorm.weight":
        return {"model.norm.weight": full}
    _, _, index, suffix = name.split(".", 3)
    prefix = _hf_layer(int(index))
    if suffix in _LAYER_SIMPLE:
        return {prefix + _LAYER_SIMPLE[suffix][0]: full}
    if suffix in ("self_attention.linear_qkv.weight", "self_attention.linear_qkv.bias"):
        kind = suffix.rsplit(".", 1)[1]
        q, k, v = split_qkv(full, arch)
        return {
            f"{prefix}self_attn.q_proj.{kind}": q,
            f"{prefix}self_attn.k_proj.{kind}": k,
            f"{prefix}self_attn.v_proj.{kind}": v,
        }
    if suffix == "mlp.linear_fc1.weight":
        gate, up = full.chunk(2, dim=0)
        return {prefix + "mlp.gate_proj.weight": gate, prefix + "mlp.up_proj.weight": up}
    raise KeyError(f"no Hugging Face name for Megatron parameter '{name}'")


@torch.no_grad()
def export_hf_state_dict(model, dtype: torch.dtype | None = None, on_device: bool = False) -> dict[str, torch.Tensor]:
    """The full model in HF names (TP shards gathered, PP stages combined), on CPU (or, with `on_device`, on the
    model's device: a colocated refit never copies to the host), on every rank.

    Tied models return no `lm_head.weight` (as `save_pretrained` writes them and vLLM loads them).
    """
    import torch.distributed as dist
    from megatron.core import parallel_state

    module = unwrap(model)
    layout = _layout(module.hf_arch)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    out: dict[str, torch.Tensor] = {}
    for local_name, param in module.named_parameters():
        name = _global_name(local_name, module)
        if tp > 1 and layout.split_dim(name) is not None:
            shards = [torch.empty_like(param) for _ in range(tp)]
            dist.all_gather(shards, param.detach().contiguous(), group=parallel_state.get_tensor_model_parallel_group())
        else:
            shards = [param.detach()]
        full = layout.unshard(name, shards if on_device else [s.cpu() for s in shards])
        for hf_name, tensor in layout.hf_tensors(name, full).items():
            # a copy: never a view of a live parameter or of a fused tensor (safetensors refuses shared storage)
            out.setdefault(hf_name, tensor.to(dtype or tensor.dtype).clone(memory_format=torch.contiguous_format))
    if pp > 1:
        if on_device:
            raise NotImplementedError("export_hf_state_dict(on_device=True) with pipeline parallelism")
        pieces: list[dict[str, torch.Tensor]] = [{} for _ in range(pp)]  # filled in by the gather
        dist.all_gather_object(pieces, out, group=parallel_state.get_pipeline_model_parallel_group())
        out = {}
        for piece in pieces:
            for hf_name, tensor in piece.items():
                out.setdefault(hf_name, tensor)
    return out


def save_hf_model(
    model,
    template_hf_dir: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype | None = None,
    max_shard_size: str = "5GB",
) -> Path:
    """Write the model as an HF directory: template's config/tokenizer files + exported weights (atomic rename).

    Collective under TP/PP (every rank must call it); only global rank 0 writes.
    """
    import torch.distributed as dist
    from huggingface_hub import save_torch_state_dict

    state = export_hf_state_dict(model, dtype)
    out_dir = Path(out_dir)
    if dist.is_initialized() and dist.get_rank() != 0:
        dist.barrier()
        return out_dir
    try:
        with atomic_directory(out_dir) as tmp:  # an existing export is swapped out only once this one is complete
            for item in Path(template_hf_dir).iterdir():
                if item.is_file() and not item.name.endswith(
                    (".safetensors", ".safetensors.index.json", ".bin", "BUILD_COMPLETE")
                ):
                    shutil.copy2(item, tmp / item.name)
            config = json.loads((tmp / "config.json").read_text())
            weight_dtype = str(next(iter(state.values())).dtype).replace("torch.", "")
            config["dtype"] = weight_dtype
            config.pop("torch_dtype", None)
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            save_torch_state_dict(state, tmp, max_shard_size=max_shard_size)
    finally:
        if dist.is_initialized():
            dist.barrier()
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Forward helpers shared by the policy and the tests


def causal_attention_mask(seq_len: int, device=None) -> torch.Tensor:
    """Megatron's boolean mask [1, 1, S, S], True = masked (future positions)."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)


def forward_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, S, V_local] of a causal forward (vocab-parallel: each TP rank holds its vocab slice).

    Right padding needs no extra mask: padded positions only see earlier tokens and are loss-masked.
    """
    batch, seq = input_ids.shape
    positions = torch.arange(seq, device=input_ids.device).unsqueeze(0).expand(batch, seq)
    return model(input_ids, positions, causal_attention_mask(seq, input_ids.device))


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, vocab_size: int | None = None, temperature: float = 1.0
) -> torch.Tensor:
    """log p(target) per position from vocab-parallel logits [B, S, V_local] divided by `temperature`; padded
    vocab ids are excluded.

    Differentiable; under TP the softmax normaliser is all-reduced across the TP group. With TP=1 on GPU the
    fused path (`fused_ops.fused_token_logprobs`) reads bf16 logits in place instead of an fp32 copy.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    tp = parallel_state.get_tensor_model_parallel_world_size() if parallel_state.model_parallel_is_initialized() else 1
    if tp == 1 and logits.is_cuda:
        from trainer.models.fused_ops import fused_token_logprobs

        return fused_token_logprobs(logits, targets, vocab_size, temperature)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    local = logits.shape[-1]
    if vocab_size is not None and vocab_size < local * tp:
        start = local * (parallel_state.get_tensor_model_parallel_rank() if tp > 1 else 0)
        ids = torch.arange(start, start + local, device=logits.device)
        logits = logits.masked_fill(ids >= vocab_size, float("-inf") if tp == 1 else -1e30)
    if tp == 1:
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -vocab_parallel_cross_entropy(logits.clone(), targets)  # it shifts its input in place


def can_select_logits(model) -> bool:
    """Whether `selected_token_logprobs` applies: one pipeline stage holding the output layer, no sequence
    parallelism (its hidden states are split along the sequence) and no multi-token prediction."""
    module = unwrap(model)
    config = module.config
    return (
        getattr(module, "pre_process", True)
        and getattr(module, "post_process", False)
        and not config.sequence_parallel
        and not getattr(config, "mtp_num_layers", None)
    )


def _host_to(index: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor made on the host, on `device` (pinned and non-blocking from the CPU to a GPU)."""
    if index.device == device:
        return index
    if device.type == "cuda" and index.device.type == "cpu":
        return index.pin_memory().to(device, non_blocking=True)
    return index.to(device)


def decoder_hidden(
    model, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """The decoder's output [S, B, H] (final norm applied) without the output layer."""
    module = unwrap(model)
    module.post_process = False
    try:
        return model(input_ids, position_ids, attention_mask)
    finally:
        module.post_process = True


def logprobs_at(
    module, hidden: torch.Tensor, index: torch.Tensor, targets: torch.Tensor, vocab_size: int | None, temperature: float
) -> torch.Tensor:
    """log p(targets[n]) from the hidden states hidden[index[n]] ([M, H] flat): the output layer and softmax run
    on those N positions only."""
    picked = hidden.index_select(0, index)
    weight = module.shared_embedding_or_output_weight() if module.share_embeddings_and_output_weights else None
    logits, _ = module.output_layer(picked.unsqueeze(1), weight=weight)  # [N, 1, V / tp]
    return token_logprobs(logits.transpose(0, 1), targets.unsqueeze(0), vocab_size, temperature)[0]


def packed_token_logprobs(model, packed, vocab_size: int | None = None, temperature: float = 1.0) -> torch.Tensor:
    """Log-probs of the trained tokens of rows packed by `trainer.models.packing.pack_shared_prefixes`, in the
    rows' own layout [B, S] (0 where nothing is trained), from one forward over the packed sequence.

    Refused (ValueError) for a model with recurrent (Mamba) layers, where packing is wrong
    (`trainer.models.packing.packing_refusal`)."""
    from trainer.models.attention import explicit_attention_mask, segment_attention
    from trainer.models.packing import packing_refusal, rotary_positions

    refusal = packing_refusal(model)
    if refusal is not None:
        raise ValueError(refusal)
    module = unwrap(model)
    device = next(module.parameters()).device
    move = lambda t: _host_to(t, device)  # noqa: E731
    positions = move(packed.positions)
    # the SDPA backend attends segment by segment; Megatron's own (local) attention reads the dense mask
    segments = [batch.to(device) for batch in packed.segments]
    with rotary_positions(module, positions[0]), explicit_attention_mask(), segment_attention(segments):
        hidden = decoder_hidden(model, move(packed.input_ids), positions, move(packed.masked))
    values = logprobs_at(
        module, hidden.reshape(hidden.shape[0], -1), move(packed.source), move(packed.targets), vocab_size, temperature
    )
    batch, seq = packed.shape
    out = torch.zeros(batch * seq, device=hidden.device, dtype=values.dtype)
    return out.index_copy(0, move(packed.rows) * seq + move(packed.cols), values).view(batch, seq)


def selected_token_logprobs(
    model,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    wanted: torch.Tensor,
    vocab_size: int | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(input_ids[:, t] | tokens before t) where `wanted[:, t]` is true, 0 elsewhere; [B, S], differentiable.

    The output layer and the softmax run only at the positions that predict a wanted token: in RL and sft only
    the assistant's tokens (a fraction of each sequence, behind a long shared prompt) enter the loss, and the
    [tokens x vocab] logits of the rest would be computed and thrown away."""
    module = unwrap(model)
    hidden = decoder_hidden(model, input_ids, position_ids, attention_mask)
    batch, seq = input_ids.shape
    # The positions are found where `wanted` lives: pass it on the CPU and the GPU never waits for them (a boolean
    # index of a GPU tensor blocks the host until the forward is done). Row-major (b, t), as a boolean index.
    rows, cols = (wanted[:, 1:] != 0).nonzero(as_tuple=True)  # position t-1 predicts token t
    rows, cols = (_host_to(x, hidden.device) for x in (rows, cols))
    targets = input_ids.to(hidden.device).reshape(-1).index_select(0, rows * seq + cols + 1)
    # hidden is [S, B, H]: row b, position t is flat index t * B + b
    values = logprobs_at(module, hidden.reshape(seq * batch, -1), cols * batch + rows, targets, vocab_size, temperature)
    shifted = (
        torch.zeros(batch * (seq - 1), device=hidden.device, dtype=values.dtype)
        .index_copy(0, rows * (seq - 1) + cols, values)
        .view(batch, seq - 1)
    )
    return torch.cat([torch.zeros(batch, 1, device=hidden.device, dtype=values.dtype), shifted], dim=1)


def describe(model) -> dict[str, Any]:
    module = unwrap(model)
    return {"hf_arch": asdict(module.hf_arch), "num_parameters": sum(p.numel() for p in module.parameters())}
