"""Mamba-2 in pure torch: the causal depthwise conv1d, the chunked SSD scan, the gated grouped RMSNorm.

These are the reference the GPU kernels are checked against (tests/gpu/test_gpu_mamba_kernels.py), and what the
hybrid model (trainer/models/nemotron_h.py) runs where those kernels are not installed (CPU). On a GPU with
mamba-ssm's Triton kernels importable (`triton_kernels`), the model runs the scan and the gated norm there instead;
the depthwise conv1d stays torch's (cuDNN), as causal-conv1d's kernels are compiled CUDA.

The state-space recurrence of one head h (head dim P, state size N), for t = 1..L:

    a_t = dt_t * A_h                    (A_h < 0, dt_t > 0: a decay rate)
    S_t = exp(a_t) S_{t-1} + dt_t x_t B_t^T        S: [P, N]
    y_t = S_t C_t + D_h x_t

B and C are shared by the heads of a group (heads of group g: g * H/G ... (g+1) * H/G - 1).
`ssd_recurrent_scan` runs it step by step (the definition); `ssd_chunked_scan` computes the same in chunks of Q
tokens: inside a chunk as a masked, decay-weighted attention-like product (quadratic in Q), across chunks by
carrying the state at chunk boundaries (one step per chunk). Both accumulate in fp32.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Depthwise causal convolution over the sequence: x [b, L, c], weight [c, K] (or nn.Conv1d's [c, 1, K]),
    bias [c] -> [b, L, c]; output t sees inputs t-K+1..t (zeros before the start).

    Computed as K shifted multiply-adds (K is 4 in Mamba-2): elementwise work whose backward is as cheap as its
    forward, where a grouped `F.conv1d` with one group per channel computes its weight gradient slowly (2.4x the
    time of this for forward + backward at [1, 2048, 3072] on the CI's CPU)."""
    if weight.dim() == 3:
        weight = weight.squeeze(1)
    width, length = weight.shape[1], x.shape[1]
    padded = F.pad(x, (0, 0, width - 1, 0))  # K-1 zeros before the first token
    out = padded[:, :length] * weight[:, 0]
    for k in range(1, width):
        out = out + padded[:, k : k + length] * weight[:, k]
    return out if bias is None else out + bias


def ssd_recurrent_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The recurrence token by token (slow; the definition the chunked scan is tested against, and one decode step).

    x [b, L, H, P], dt [b, L, H] (already softplus'd, biased and clamped), A [H], B/C [b, L, G, N],
    D [H], initial_state [b, H, P, N]. Returns (y [b, L, H, P] fp32, final state [b, H, P, N] fp32)."""
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2], B.shape[3]
    per_group = heads // groups
    xf, dtf = x.float(), dt.float()
    Bh = B.float().repeat_interleave(per_group, dim=2)  # [b, L, H, N]
    Ch = C.float().repeat_interleave(per_group, dim=2)
    state = (
        initial_state.float()
        if initial_state is not None
        else x.new_zeros(batch, heads, head_dim, state_size, dtype=torch.float32)
    )
    decay = torch.exp(dtf * A.float())  # [b, L, H]
    ys = []
    for t in range(length):
        inject = (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]  # [b, H, P, N]
        state = decay[:, t, :, None, None] * state + inject
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y, state


def ssd_chunked_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """The Mamba-2 SSD scan in chunks of `chunk_size` tokens; same arguments and result as `ssd_recurrent_scan`.

    Per chunk, with c_l = a_1 + ... + a_l the cumulative decay inside the chunk:
      within:  y_l  = sum_{s <= l} exp(c_l - c_s) (C_l . B_s) dt_s x_s
      carried: y_l += exp(c_l) C_l . S_start          (S_start: the state entering the chunk)
      state:   S_end = exp(c_Q) S_start + sum_s exp(c_Q - c_s) dt_s x_s B_s^T
    B.C products are formed per group, not per head. A sequence that is not a multiple of the chunk size is padded
    with dt = 0 (no decay, no input), which changes neither the outputs nor the final state.

    Returns y [b, L, H, P] (fp32), and the final state [b, H, P, N] too when `return_final_state`."""
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2], B.shape[3]
    per_group = heads // groups
    q = int(chunk_size)
    pad = (-length) % q
    xf, dtf, Bf, Cf = x.float(), dt.float(), B.float(), C.float()
    if pad:
        xf, dtf, Bf, Cf = (
            F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (xf, dtf, Bf, Cf)
        )  # pad the sequence dim (dim 1)
    chunks = (length + pad) // q
    # [b, c, q, G, R, P] / [b, c, q, G, R] / [b, c, q, G, N] with R = heads per group
    xc = xf.view(batch, chunks, q, groups, per_group, head_dim)
    dtc = dtf.view(batch, chunks, q, groups, per_group)
    Bc = Bf.view(batch, chunks, q, groups, state_size)
    Cc = Cf.view(batch, chunks, q, groups, state_size)
    cum = torch.cumsum(dtc * A.float().view(groups, per_group), dim=2)  # [b, c, q, G, R], non-increasing
    xdt = xc * dtc[..., None]

    # within each chunk: decay from source s to target l (s <= l), masked before the exp so nothing overflows
    later = torch.ones(q, q, dtype=torch.bool, device=x.device).tril().view(1, 1, q, q, 1, 1)
    gap = (cum[:, :, :, None] - cum[:, :, None, :]).masked_fill(~later, float("-inf"))  # [b, c, l, s, G, R]
    scores = torch.einsum("bclgn,bcsgn->bclsg", Cc, Bc)  # [b, c, l, s, G]
    y = torch.einsum("bclsgr,bcsgrp->bclgrp", torch.exp(gap) * scores[..., None], xdt)

    # each chunk's own contribution to the state at its end, then the states entering each chunk
    to_end = torch.exp(cum[:, :, -1:] - cum)  # [b, c, q, G, R]
    own = torch.einsum("bcsgn,bcsgr,bcsgrp->bcgrpn", Bc, to_end, xdt)  # [b, c, G, R, P, N]
    chunk_decay = torch.exp(cum[:, :, -1])[..., None, None]  # [b, c, G, R, 1, 1]
    state = (
        initial_state.float().view(batch, groups, per_group, head_dim, state_size)
        if initial_state is not None
        else xf.new_zeros(batch, groups, per_group, head_dim, state_size)
    )
    starts = []
    for c in range(chunks):
        starts.append(state)
        state = chunk_decay[:, c] * state + own[:, c]
    entering = torch.stack(starts, dim=1)  # [b, c, G, R, P, N]
    y = y + torch.einsum("bclgn,bcgrpn->bclgrp", Cc, entering) * torch.exp(cum)[..., None]

    y = y.reshape(batch, chunks * q, heads, head_dim)[:, :length]
    if D is not None:
        y = y + D.float()[:, None] * x.float()
    if return_final_state:
        return y, state.reshape(batch, heads, head_dim, state_size)
    return y


def gated_rms_norm(
    y: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, group_size: int, eps: float
) -> torch.Tensor:
    """Mamba-2's output norm (norm after the gate): RMSNorm of y * silu(gate) over groups of `group_size`
    channels, times `weight`. y, gate [..., d] (computed in fp32) -> [..., d] in y's dtype times weight."""
    dtype = y.dtype
    gated = y.float() * F.silu(gate.float())
    grouped = gated.unflatten(-1, (-1, group_size))
    normed = grouped * torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.flatten(-2).to(dtype)


KERNELS_ENV = "SLURM_GRPO_MAMBA_KERNELS"  # "torch" keeps a GPU on the pure-torch path (benchmarks compare the two)


@functools.cache
def triton_kernels():
    """(chunked scan with its backward, gated RMSNorm) from mamba-ssm's Triton kernels, or None where mamba-ssm or
    Triton is missing or `SLURM_GRPO_MAMBA_KERNELS=torch`. mamba-ssm is published as source whose package
    __init__ loads a compiled extension; bench/build_gpu_extras.sh carries only its Triton files."""
    if os.environ.get(KERNELS_ENV, "").lower() == "torch":
        return None
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError:
        return None
    return mamba_chunk_scan_combined, rmsnorm_fn


__all__ = ["causal_conv1d", "gated_rms_norm", "ssd_chunked_scan", "ssd_recurrent_scan", "triton_kernels"]
