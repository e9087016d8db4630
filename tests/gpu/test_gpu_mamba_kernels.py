"""On a CUDA device with mamba-ssm's Triton kernels: the NemotronH mixer's GPU path (chunked scan with dt bias,
softplus and clamp inside the kernel, then the gated group RMSNorm) against the pure-torch reference of
trainer/models/ssm.py, forward and every gradient, in fp32 and bf16. The model uses whichever is present, so the two
must agree before a benchmark's speed-up means anything. Runs where CUDA is: `pytest tests/gpu -m gpu`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.models.ssm import gated_rms_norm, ssd_chunked_scan, triton_kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(triton_kernels() is None, reason="needs mamba-ssm's Triton kernels (bench/build_gpu_extras.sh)"),
]

# The 9B's per-rank mixer at TP 1 on a short sequence: 128 heads of 80 in 8 groups, state 128, chunks of 128.
HEADS, HEAD_DIM, GROUPS, STATE, CHUNK = 128, 80, 8, 128, 128
DT_LIMIT = (0.0, float("inf"))


def _inputs(dtype: torch.dtype, batch=2, length=300, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    r = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=g, device="cuda")).to(dtype)  # noqa: E731
    tensors = {
        "x": r(batch, length, HEADS, HEAD_DIM),
        "dt": r(batch, length, HEADS) - 2,  # softplus(dt + bias) mostly well under 1, as trained models have it
        "B": r(batch, length, GROUPS, STATE, scale=0.3),
        "C": r(batch, length, GROUPS, STATE, scale=0.3),
        "z": r(batch, length, HEADS * HEAD_DIM),
        "dt_bias": r(HEADS, scale=0.5),
        "A_log": torch.randn(HEADS, generator=g, device="cuda").float(),
        "D": torch.randn(HEADS, generator=g, device="cuda").float(),
        "norm_weight": (1 + 0.2 * torch.randn(HEADS * HEAD_DIM, generator=g, device="cuda")).to(dtype),
    }
    return {k: v.requires_grad_() for k, v in tensors.items()}


def _torch_path(t):
    batch, length = t["x"].shape[:2]
    dt = F.softplus(t["dt"].float() + t["dt_bias"].float()).clamp(*DT_LIMIT)
    y = ssd_chunked_scan(t["x"], dt, -torch.exp(t["A_log"]), t["B"], t["C"], CHUNK, D=t["D"])
    return gated_rms_norm(y.reshape(batch, length, -1), t["z"], t["norm_weight"], HEAD_DIM * HEADS // GROUPS, 1e-5)


def _kernel_path(t):
    scan, norm = triton_kernels()
    batch, length = t["x"].shape[:2]
    y = scan(
        t["x"],
        t["dt"],
        -torch.exp(t["A_log"]),
        t["B"],
        t["C"],
        CHUNK,
        D=t["D"],
        dt_bias=t["dt_bias"],
        dt_softplus=True,
        dt_limit=DT_LIMIT,
    )
    return norm(
        y.reshape(batch, length, -1),
        t["norm_weight"],
        None,
        z=t["z"],
        eps=1e-5,
        group_size=HEAD_DIM * HEADS // GROUPS,
        norm_before_gate=False,
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 5e-3), (torch.bfloat16, 3e-2)])
def test_triton_mixer_path_matches_the_torch_reference(dtype, tol):
    """Outputs and the gradients of every input and parameter agree (relative L2 error; fp32 leaves room for
    Triton's TF32 dots), and a perturbed input is told apart: the comparison is not vacuous."""
    ref_in, ker_in = _inputs(dtype), _inputs(dtype)
    ref_out, ker_out = _torch_path(ref_in), _kernel_path(ker_in)
    assert ref_out.shape == ker_out.shape
    assert _rel(ker_out, ref_out) < tol
    grad = torch.randn_like(ref_out.float()).to(ref_out.dtype)
    ref_out.backward(grad)
    ker_out.to(ref_out.dtype).backward(grad)
    for name in ref_in:
        assert ref_in[name].grad is not None and ker_in[name].grad is not None, name
        assert _rel(ker_in[name].grad, ref_in[name].grad) < 3 * tol, (name, _rel(ker_in[name].grad, ref_in[name].grad))
    other = _inputs(dtype, seed=1)
    with torch.no_grad():
        assert _rel(_kernel_path(other), ref_out) > 0.5
