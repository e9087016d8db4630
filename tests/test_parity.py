"""trainer/parity on CPU: TP=2 and DP=2 against one rank (gloo, fp32), Megatron against transformers, and the
pass/fail rules on made-up comparisons. The same functions run on GPUs in tests/gpu and the benchmarks."""

from __future__ import annotations

import pytest
import torch

from trainer.parity import TINY_SHAPE, logprob_parity, make_hf_model, tp_dp_checks, tp_dp_parity
from trainer.parity.tp_dp import compare_step


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_model(tmp_path_factory.mktemp("hf"), TINY_SHAPE, torch.device("cpu"))


def test_tp2_and_dp2_match_one_rank(hf_dir, tmp_path):
    result = tp_dp_parity(hf_dir, gbs=4, seq=32, precisions=("fp32",), overlap=(True, False), work=tmp_path)
    assert result["passed"], result["checks"]
    runs = result["runs"]
    assert {run: (r["tp"], r["dp"]) for run, r in runs.items()} == {"tp1": (1, 1), "dp2": (1, 2), "tp2": (2, 1)}
    # fp32 on CPU: only summation order differs (seen ~1e-7); a missing TP reduction shows up as >1e-1
    for run in ("tp2", "dp2"):
        c = runs[run]["parity"]["fp32_vs_tp1_fp32"]
        assert c["grad_norm_rel"] < 1e-5 and c["nll_rel"] < 1e-5, c
        assert c["grad"]["rel_l2"] < 1e-5 and c["grad"]["worst_tensor_rel_l2"] < 1e-4, c["grad"]
        assert c["update"]["rel_l2"] < 1e-3, c["update"]
        assert c["grad"]["elements"] == runs["tp1"]["params_per_rank"]
    # TP=2 halves the sharded weights on each rank
    assert runs["tp2"]["params_per_rank"] < 0.6 * runs["tp1"]["params_per_rank"]
    # the overlapped and the after-the-backward all-reduce sum the same two shards: bit for bit the same step
    assert runs["dp2"]["parity"]["overlap_grad_reduce"] is True
    c = runs["dp2"]["parity"]["fp32_overlap_off_vs_on"]
    assert c["grad"]["rel_l2"] == 0 and c["update"]["rel_l2"] == 0 and c["grad_norm_rel"] == 0, c


def test_megatron_logprobs_match_transformers(hf_dir):
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    result = logprob_parity(hf_dir, ["sdpa", "local"], batch=2, seq=64, device=torch.device("cpu"))
    assert result["passed"], result
    assert result["megatron_sdpa_fp32"]["max_abs"] < 1e-4 and result["megatron_local_fp32"]["max_abs"] < 1e-4
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == tf32, "TF32 left changed"


def _record(scale: float = 1.0, loss: float = -0.5) -> dict:
    """A made-up parity record: gradients and updates scaled by `scale` against the reference (scale 1)."""
    g = torch.Generator().manual_seed(0)
    grads = {"w": torch.randn(64, 64, generator=g), "b": torch.randn(64, generator=g)}
    lp = -torch.rand(2, 16, generator=g)
    return {
        "loss": loss,
        "grad_norm": 3.0 * scale,
        "nll": 2.0,
        "logprobs": lp,
        "loss_mask": torch.ones(2, 16),
        "grads": {k: v * scale for k, v in grads.items()},
        "update": {k: -1e-6 * v.sign() for k, v in grads.items()},
    }


def test_checks_fail_a_wrong_gradient_and_pass_rounding():
    cpu = torch.device("cpu")
    ref = _record()
    summation_order = compare_step(_record(scale=1 + 1e-7), ref, cpu, lr=1e-6)
    missing_reduction = compare_step(_record(scale=0.5), ref, cpu, lr=1e-6)  # one of two shards' gradient
    ok = tp_dp_checks({"tp1": {}, "tp2": {"fp32_vs_tp1_fp32": summation_order}})
    bad = tp_dp_checks({"tp1": {}, "tp2": {"fp32_vs_tp1_fp32": missing_reduction}})
    assert ok and all(ok.values()), ok
    assert not bad["tp2_fp32_grad_rel_l2<=1e-3"] and not bad["tp2_fp32_loss_gradnorm_nll_rel<=1e-3"]


def test_bf16_is_judged_against_the_one_rank_bf16_error():
    cpu = torch.device("cpu")
    fp32 = _record()
    tp1_bf16 = compare_step(_record(scale=1 + 1e-2), fp32, cpu, lr=1e-6)  # rounding of one rank
    as_far = compare_step(_record(scale=1 + 1.2e-2), fp32, cpu, lr=1e-6)
    much_further = compare_step(_record(scale=1 + 5e-2), fp32, cpu, lr=1e-6)
    key = "tp2_bf16_grad_rel_l2_vs_fp32<=1.5x_tp1_bf16"
    assert tp_dp_checks({"tp1": {"bf16_vs_fp32": tp1_bf16}, "tp2": {"bf16_vs_tp1_fp32": as_far}})[key]
    assert not tp_dp_checks({"tp1": {"bf16_vs_fp32": tp1_bf16}, "tp2": {"bf16_vs_tp1_fp32": much_further}})[key]
