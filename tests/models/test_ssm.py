"""The pure-torch Mamba-2 pieces (trainer/models/ssm.py): the chunked scan against the step-by-step recurrence and
against transformers' NemotronH torch path; the causal conv1d and the gated norm against their definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.models.ssm import causal_conv1d, gated_rms_norm, ssd_chunked_scan, ssd_recurrent_scan


def _inputs(batch=2, length=29, heads=6, head_dim=4, groups=3, state=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=g, dtype=torch.float64)
    dt = F.softplus(torch.randn(batch, length, heads, generator=g, dtype=torch.float64))  # > 0, some near 1
    A = -torch.exp(torch.randn(heads, generator=g, dtype=torch.float64))  # < 0
    B = torch.randn(batch, length, groups, state, generator=g, dtype=torch.float64)
    C = torch.randn(batch, length, groups, state, generator=g, dtype=torch.float64)
    D = torch.randn(heads, generator=g, dtype=torch.float64)
    init = torch.randn(batch, heads, head_dim, state, generator=g, dtype=torch.float64)
    return x, dt, A, B, C, D, init


@pytest.mark.parametrize("chunk", [1, 4, 7, 29, 64])
def test_chunked_scan_equals_the_recurrence(chunk):
    """Whatever the chunking (one chunk, many, a ragged last one), the chunked scan is the recurrence."""
    x, dt, A, B, C, D, init = _inputs()
    expected, final = ssd_recurrent_scan(x, dt, A, B, C, D, initial_state=init)
    got, got_final = ssd_chunked_scan(x, dt, A, B, C, chunk, D=D, initial_state=init, return_final_state=True)
    assert got.shape == expected.shape == x.shape
    assert (got - expected).abs().max().item() < 1e-5 * expected.abs().max().item()
    assert (got_final - final).abs().max().item() < 1e-5 * final.abs().max().item()


def test_scan_state_carries_across_calls():
    """Scanning a sequence in two calls (the first's final state as the second's initial state) gives the
    one-call result: what a decode step or a chunked prefill relies on."""
    x, dt, A, B, C, D, _ = _inputs(length=24)
    whole = ssd_chunked_scan(x, dt, A, B, C, 8, D=D)
    first, state = ssd_chunked_scan(x[:, :10], dt[:, :10], A, B[:, :10], C[:, :10], 8, D=D, return_final_state=True)
    second = ssd_chunked_scan(x[:, 10:], dt[:, 10:], A, B[:, 10:], C[:, 10:], 8, D=D, initial_state=state)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-6)


def test_heads_use_their_own_group():
    """Head h reads B/C of group h // (H / G): changing group 1's B changes only heads 2 and 3 (H=6, G=3)."""
    x, dt, A, B, C, D, _ = _inputs()
    base = ssd_chunked_scan(x, dt, A, B, C, 8)
    B2 = B.clone()
    B2[:, :, 1] += 1.0
    changed = (ssd_chunked_scan(x, dt, A, B2, C, 8) - base).abs().amax(dim=(0, 1, 3))
    assert changed[[2, 3]].min() > 1e-3 and changed[[0, 1, 4, 5]].max() == 0


def test_scan_matches_transformers_torch_path():
    from transformers.models.nemotron_h.modeling_nemotron_h import mamba2_chunk_scan

    x, dt, A, B, C, D, _ = (t.float() for t in _inputs(length=37))
    bias = torch.full((x.shape[2],), 0.3)  # transformers adds the bias to the raw dt and applies softplus
    raw = torch.log(torch.expm1(dt)) - bias
    theirs = mamba2_chunk_scan(x, raw, A, B, C, chunk_size=8, D=D, dt_bias=bias, dt_softplus=True)
    ours = ssd_chunked_scan(x, dt, A, B, C, 8, D=D)
    assert (ours - theirs).abs().max().item() < 1e-4


def test_causal_conv1d_is_causal_and_depthwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 10, 3, generator=g)
    weight, bias = torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    out = causal_conv1d(x, weight, bias)
    # definition: out[t, c] = bias[c] + sum_k weight[c, k] * x[t - 3 + k, c]
    padded = F.pad(x, (0, 0, 3, 0))
    expected = bias + sum(weight[:, k] * padded[:, k : k + 10] for k in range(4))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(causal_conv1d(x, weight.unsqueeze(1), bias), out)  # nn.Conv1d's weight shape too
    # and what torch's grouped convolution computes (one group per channel, left padding K-1)
    conv = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=3, groups=3)[..., :10].transpose(1, 2)
    assert torch.allclose(out, conv, atol=1e-6)


def test_gated_norm_matches_transformers():
    from transformers.models.zamba2.modeling_zamba2 import Zamba2RMSNormGated

    g = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 5, 32, generator=g), torch.randn(2, 5, 32, generator=g)
    norm = Zamba2RMSNormGated(32, group_size=8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32, generator=g))
        expected = norm(y, z)
    assert torch.allclose(gated_rms_norm(y, z, norm.weight.detach(), 8, 1e-5), expected, atol=1e-6)
