"""`python -m bench.mamba_batch_probe`: the Mamba-2 mixer's pieces at one row a micro-batch against two, per token.

`bench-nemotron-h-gpu` found the NemotronH step 3.8x slower per token at micro-batch 1 than at 2 (4,096-token rows,
one H200). This probe times the mixer's own work with the trainer's input layout: one in-projection output in
Megatron's [sequence, batch, features] order, transposed and split into z, xBC and dt views exactly as
`TorchMambaMixer.forward` does, then the depthwise conv (`ssm.causal_conv1d`), the chunked scan and the gated
RMSNorm (mamba-ssm's Triton kernels where `ssm.triton_kernels()` has them, else the torch ones), forward and
backward. Sizes: Nemotron Nano v2 9B's mixer (128 heads of 80, 8 groups, state 128, chunks of 128). Prints one
line a case as it goes: milliseconds per 1,000 tokens.
"""

from __future__ import annotations

import argparse
import sys
import time

HEADS, HEAD_DIM, GROUPS, STATE, CHUNK, CONV = 128, 80, 8, 128, 128, 4


def mixer_work(batch: int, length: int, device, dtype, kernels):
    """A closure running the mixer's conv + scan + norm forward and backward once on fresh views."""
    import torch
    import torch.nn.functional as F

    from trainer.models.ssm import causal_conv1d, gated_rms_norm, ssd_chunked_scan

    d_inner, conv_dim = HEADS * HEAD_DIM, HEADS * HEAD_DIM + 2 * GROUPS * STATE
    proj = torch.randn(length, batch, d_inner + conv_dim + HEADS, device=device, dtype=dtype, requires_grad=True)
    weight = torch.randn(conv_dim, CONV, device=device, dtype=dtype, requires_grad=True)
    norm_weight = torch.ones(d_inner, device=device, dtype=dtype, requires_grad=True)
    A = -torch.rand(HEADS, device=device, dtype=torch.float32)
    D = torch.ones(HEADS, device=device, dtype=torch.float32)
    dt_bias = torch.zeros(HEADS, device=device, dtype=dtype)

    def run() -> None:
        projected = proj.transpose(0, 1)
        z, xBC, dt = projected.split([d_inner, conv_dim, HEADS], dim=-1)
        xBC = F.silu(causal_conv1d(xBC, weight, None))
        x, B, C = xBC.split([d_inner, GROUPS * STATE, GROUPS * STATE], dim=-1)
        x = x.reshape(batch, length, HEADS, HEAD_DIM)
        B = B.reshape(batch, length, GROUPS, STATE)
        C = C.reshape(batch, length, GROUPS, STATE)
        if kernels is not None:
            scan, norm = kernels
            y = scan(x, dt, A, B, C, CHUNK, D=D, dt_bias=dt_bias, dt_softplus=True)
            y = norm(y.reshape(batch, length, d_inner), norm_weight, None, z=z, group_size=d_inner // GROUPS)
        else:
            dtf = F.softplus(dt.float() + dt_bias.float())
            y = ssd_chunked_scan(x, dtf, A, B, C, CHUNK, D=D)
            y = gated_rms_norm(y.reshape(batch, length, d_inner), z, norm_weight, d_inner // GROUPS, 1e-5)
        y.float().square().mean().backward()

    return run


def timed(run, reps: int, device) -> float:
    import torch

    run()  # warm-up: Triton compiles and autotunes here
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / reps


def main(argv: list[str] | None = None) -> int:
    import torch

    from trainer.models.ssm import triton_kernels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--batches", default="1,2,4")
    p.add_argument("--reps", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kernels = triton_kernels() if device.type == "cuda" else None
    print(f"[probe] {device}, {dtype}, kernels {'triton' if kernels else 'torch'}, rows of {args.length}", flush=True)
    for batch in (int(b) for b in args.batches.split(",")):
        seconds = timed(mixer_work(batch, args.length, device, dtype, kernels), args.reps, device)
        per_k = 1e6 * seconds / (batch * args.length)
        print(f"[probe] micro-batch {batch}: {1e3 * seconds:.1f} ms a call, {per_k:.2f} ms a 1,000 tokens", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
