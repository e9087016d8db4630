"""NemotronH (hybrid Mamba-2 / attention / squared-ReLU MLP) on Megatron-core without Transformer Engine.

Megatron-core's own `MambaMixer` needs the mamba-ssm and causal-conv1d kernels and its stack spec needs
Transformer Engine. Here the model is Megatron's `MambaModel` / `MambaStack` (its hybrid layer pattern: 'M'
Mamba-2, '*' attention, '-' MLP) on a spec of our own:

* `TorchMambaMixer`: in_proj -> (z, xBC, dt), causal depthwise conv1d over xBC, SiLU, the chunked SSD scan
  (`trainer.models.ssm`), gated grouped RMSNorm, out_proj; what transformers' `NemotronHMamba2Mixer` computes
  in its torch path, with Megatron's tensor-parallel linears. Parameter names follow Megatron's mixer
  (in_proj, conv1d, dt_bias, A_log, D, norm, out_proj); each TP rank holds whole heads and whole groups, and its
  in_proj rows are its own [z; x; B; C; dt] (its conv1d channels its own [x; B; C]).
* attention and MLP layers: the local GPT layer pieces (`attention.gpt_layer_spec`: SDPA or Megatron's local
  core attention, fused RMSNorm on CUDA), without position embeddings; the MLP is up -> squared ReLU -> down.
* `HybridStack`: MambaStack with a final RMSNorm that is not Transformer Engine's.

The weights mapping to and from Hugging Face names is in `nemotron_h_bridge.py`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.ssm.mamba_block import MambaStack, MambaStackSubmodules
from megatron.core.transformer.module import MegatronModule

from trainer.models.ssm import causal_conv1d, gated_rms_norm, ssd_chunked_scan, triton_kernels


@dataclass
class TorchMambaMixerSubmodules:
    in_proj: Any = None
    out_proj: Any = None


class TorchMambaMixer(MegatronModule):
    """A Mamba-2 mixer in pure torch with Megatron's TP linears ([s, b, h] in, ([s, b, h], bias) out).

    Sizes come from the TransformerConfig (mamba_num_heads, mamba_head_dim, mamba_num_groups, mamba_state_dim);
    the rest from the spec's params. TP must divide the group count (and so the head count)."""

    def __init__(
        self,
        config,
        submodules: TorchMambaMixerSubmodules,
        d_model: int,
        layer_number: int | None = None,
        pg_collection=None,
        pp_layer_offset: int = 0,
        conv_kernel: int = 4,
        chunk_size: int = 128,
        dt_limit: tuple[float, float] = (0.0, math.inf),
        norm_eps: float = 1e-5,
        conv_bias: bool = True,
    ):
        super().__init__(config)
        from megatron.core.process_groups_config import ProcessGroupCollection
        from megatron.core.transformer.spec_utils import build_module

        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp", "cp"])
        tp = pg_collection.tp.size()
        if config.context_parallel_size != 1:
            raise NotImplementedError("TorchMambaMixer: context parallelism is not supported")
        self.layer_number = layer_number
        self.heads, self.head_dim = int(config.mamba_num_heads), int(config.mamba_head_dim)
        self.groups, self.state_size = int(config.mamba_num_groups), int(config.mamba_state_dim)
        if self.heads % self.groups:
            raise ValueError(f"mamba heads {self.heads} must be a multiple of the groups {self.groups}")
        if self.groups % tp:
            raise ValueError(f"tensor_model_parallel_size={tp} must divide the Mamba group count {self.groups}")
        self.d_inner = self.heads * self.head_dim
        self.heads_local, self.groups_local = self.heads // tp, self.groups // tp
        self.d_inner_local = self.d_inner // tp
        self.conv_dim_local = self.d_inner_local + 2 * self.groups_local * self.state_size
        self.chunk_size, self.dt_limit, self.norm_eps = int(chunk_size), tuple(dt_limit), float(norm_eps)
        self.group_size = self.d_inner // self.groups

        self.in_proj = build_module(
            submodules.in_proj,
            d_model,
            2 * self.d_inner + 2 * self.groups * self.state_size + self.heads,  # z x B C dt
            config=config,
            init_method=config.init_method,
            gather_output=False,
            bias=False,
            skip_bias_add=False,
            is_expert=False,
            tp_comm_buffer_name="fc1",
            tp_group=pg_collection.tp,
        )
        dtype = config.params_dtype
        self.conv1d = torch.nn.Conv1d(
            self.conv_dim_local,
            self.conv_dim_local,
            kernel_size=conv_kernel,
            groups=self.conv_dim_local,
            padding=conv_kernel - 1,
            bias=conv_bias,
            dtype=dtype,
        )
        # SSM parameters (every weight is overwritten from the checkpoint; these are only shapes and a sane init)
        self.dt_bias = torch.nn.Parameter(torch.zeros(self.heads_local, dtype=dtype))
        self.A_log = torch.nn.Parameter(torch.zeros(self.heads_local, dtype=torch.float32))
        self.D = torch.nn.Parameter(torch.ones(self.heads_local, dtype=torch.float32))
        self.norm = _GatedNormWeight(self.d_inner_local, dtype)
        self.out_proj = build_module(
            submodules.out_proj,
            self.d_inner,
            d_model,
            config=config,
            init_method=config.output_layer_init_method,
            bias=False,
            input_is_parallel=True,
            skip_bias_add=True,
            is_expert=False,
            tp_comm_buffer_name="fc2",
            tp_group=pg_collection.tp,
        )

    def forward(self, hidden_states, inference_context=None, *, inference_params=None, packed_seq_params=None):
        if inference_context is not None or inference_params is not None:
            raise NotImplementedError("TorchMambaMixer: inference caches are not supported (generation is vLLM's)")
        if packed_seq_params is not None:
            raise NotImplementedError("TorchMambaMixer: packed sequences are not supported")
        projected, _ = self.in_proj(hidden_states)  # [s, b, proj / tp] (the whole sequence under SP)
        projected = projected.transpose(0, 1)  # [b, s, .]
        batch, seq = projected.shape[:2]
        z, xBC, dt = projected.split([self.d_inner_local, self.conv_dim_local, self.heads_local], dim=-1)
        xBC = F.silu(causal_conv1d(xBC, self.conv1d.weight, self.conv1d.bias))
        x, B, C = xBC.split(
            [self.d_inner_local, self.groups_local * self.state_size, self.groups_local * self.state_size], dim=-1
        )
        x = x.reshape(batch, seq, self.heads_local, self.head_dim)
        B = B.reshape(batch, seq, self.groups_local, self.state_size)
        C = C.reshape(batch, seq, self.groups_local, self.state_size)
        A = -torch.exp(self.A_log.float())
        kernels = triton_kernels() if projected.is_cuda else None
        if kernels is not None:
            scan, norm = kernels
            y = scan(
                x,
                dt,
                A,
                B,
                C,
                self.chunk_size,
                D=self.D,
                dt_bias=self.dt_bias,
                dt_softplus=True,
                dt_limit=self.dt_limit,
            )
            y = norm(
                y.reshape(batch, seq, self.d_inner_local),
                self.norm.weight,
                None,
                z=z,
                eps=self.norm_eps,
                group_size=self.group_size,
                norm_before_gate=False,
            )
        else:
            dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(self.dt_limit[0], self.dt_limit[1])
            y = ssd_chunked_scan(x, dt, A, B, C, self.chunk_size, D=self.D)
            y = gated_rms_norm(
                y.reshape(batch, seq, self.d_inner_local), z, self.norm.weight, self.group_size, self.norm_eps
            )
        out, bias = self.out_proj(y.to(hidden_states.dtype).transpose(0, 1).contiguous())
        return out, bias

    def mamba_state_shapes_per_request(self):
        return (self.conv_dim_local, self.conv1d.kernel_size[0]), (
            self.heads_local,
            self.head_dim,
            self.state_size,
        )


class _GatedNormWeight(torch.nn.Module):
    """Holds the gated norm's weight (the norm itself is `ssm.gated_rms_norm`), named `norm.weight`."""

    def __init__(self, size: int, dtype: torch.dtype):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(size, dtype=dtype))


class HybridStack(MambaStack):
    """MambaStack whose final norm is `final_norm_cls` (MambaStack builds Transformer Engine's), with full
    activation checkpointing per layer when the config asks for it (`recompute_granularity="full"`, which
    MambaStack itself ignores)."""

    def __init__(self, config, submodules, *args, final_norm_cls=None, **kwargs):
        kwargs["post_layer_norm"] = False
        super().__init__(config, submodules, *args, **kwargs)
        if self.post_process:
            self.final_norm = final_norm_cls(config, config.hidden_size, eps=config.layernorm_epsilon)
        if config.recompute_granularity == "full":
            for layer in self.layers:
                layer.forward = _recomputed(layer.forward)

    def forward(self, *args, **kwargs):
        hidden_states = super().forward(*args, **kwargs)
        if self.post_process:
            hidden_states = self.final_norm(hidden_states)
        return hidden_states


def _recomputed(forward):
    """`forward` whose activations are not kept under autograd: recomputed in the backward (non-reentrant
    torch checkpoint, so keyword arguments pass through; the model has no dropout, so no RNG state to replay)."""
    from torch.utils.checkpoint import checkpoint

    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def nemotron_h_stack_spec(
    mixer_params: dict[str, Any], norm_eps: float, backend: str | None = "auto", fused: bool | None = None
):
    """The MambaStack spec: Mamba-2 layers (`TorchMambaMixer`), attention layers and squared-ReLU MLP layers
    from the local GPT layer spec (attention backend and fused ops as for the GPT model)."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
    from megatron.core.ssm.mamba_layer import MambaLayer, MambaLayerSubmodules
    from megatron.core.ssm.mlp_layer import MLPLayer
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.identity_op import IdentityFuncOp, IdentityOp
    from megatron.core.transformer.spec_utils import ModuleSpec

    from trainer.models.attention import gpt_layer_spec

    gpt = gpt_layer_spec(False, backend, fused=fused)
    layer = gpt.submodules
    norm_cls = layer.input_layernorm
    attention = dataclasses.replace(
        gpt,
        submodules=dataclasses.replace(layer, pre_mlp_layernorm=IdentityOp, mlp=IdentityOp, mlp_bda=IdentityFuncOp),
    )
    mlp = ModuleSpec(
        module=MLPLayer,
        submodules=dataclasses.replace(
            layer, input_layernorm=IdentityOp, self_attention=IdentityOp, self_attn_bda=IdentityFuncOp
        ),
    )
    mamba = ModuleSpec(
        module=MambaLayer,
        submodules=MambaLayerSubmodules(
            norm=ModuleSpec(module=norm_cls, params={"eps": norm_eps}),
            mixer=ModuleSpec(
                module=TorchMambaMixer,
                submodules=TorchMambaMixerSubmodules(in_proj=ColumnParallelLinear, out_proj=RowParallelLinear),
                params=dict(mixer_params),
            ),
            mamba_bda=get_bias_dropout_add,
        ),
    )
    return ModuleSpec(
        module=HybridStack,
        submodules=MambaStackSubmodules(mamba_layer=mamba, attention_layer=attention, mlp_layer=mlp),
        params={"final_norm_cls": norm_cls},
    )
