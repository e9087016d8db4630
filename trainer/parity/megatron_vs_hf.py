"""Megatron-core policy against `transformers`: token log-probs of the same weights and tokens.

The policy's model is a Megatron-core GPTModel built from an HF checkpoint by the bridge (trainer/models/
megatron_bridge.py); generation runs the HF/vLLM implementation of the same weights. GRPO's importance ratios
compare the two, so their log-probs must agree up to rounding. Compared, on random tokens:

  reference                    transformers fp32, TF32 off;
  transformers_autocast_bf16   transformers with the policy's recipe (fp32 weights, bf16 autocast): the yardstick;
  transformers_pure_bf16       transformers in bf16 weights and activations (information only);
  megatron_<backend>_fp32      our model, no autocast;
  megatron_<backend>_bf16      our model in the policy's bf16 mode (fp32 master weights, bf16 autocast).

Tolerances (absolute log-prob differences against the reference):
  fp32: max <= 2e-3. Same weights, same fp32 arithmetic: only summation order differs.
  bf16: mean <= 1.5 x and max <= 2 x transformers_autocast_bf16's (+1e-4 / +1e-3 slack). Both round the same
        matmul inputs to bf16 and differ only in the order of operations, so bf16 error of our own beyond that
        of transformers with the same recipe is a bug of ours, not rounding. An absolute bf16 bound would either
        be loose enough to hide a bug or fail on a larger model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trainer.parity.builders import free, make_worker

FP32_MAX_ABS = 2e-3
BF16_MEAN_FACTOR, BF16_MEAN_SLACK = 1.5, 1e-4
BF16_MAX_FACTOR, BF16_MAX_SLACK = 2.0, 1e-3


def hf_token_logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t] | ids[:, :t]) for t >= 1 from a transformers model, fp32, [B, S-1]."""
    logits = model(ids).logits
    return torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def logprob_checks(out: dict, backends: list[str]) -> dict:
    """Pass/fail of each backend's fp32 and bf16 errors (see the module docstring for why these tolerances)."""
    yardstick = out["transformers_autocast_bf16"]
    checks = {}
    for backend in backends:
        m32, m16 = out[f"megatron_{backend}_fp32"], out[f"megatron_{backend}_bf16"]
        checks[f"{backend}_fp32_max_abs<=2e-3"] = m32["max_abs"] <= FP32_MAX_ABS
        checks[f"{backend}_bf16_mean<=1.5x_transformers_autocast"] = (
            m16["mean_abs"] <= BF16_MEAN_FACTOR * yardstick["mean_abs"] + BF16_MEAN_SLACK
        )
        checks[f"{backend}_bf16_max<=2x_transformers_autocast"] = (
            m16["max_abs"] <= BF16_MAX_FACTOR * yardstick["max_abs"] + BF16_MAX_SLACK
        )
    return checks


def logprob_parity(hf_dir: Path, backends: list[str], batch: int, seq: int, device: torch.device) -> dict:
    """Token log-probs of Megatron (fp32 and bf16 autocast, per attention backend: sdpa, sdpa-unfused, local)
    against transformers fp32 on `batch` x `seq` random tokens of the model in `hf_dir`.

    Returns each candidate's {max_abs, mean_abs} error, the reference's mean log-prob and logit std (a check is
    only meaningful on peaked logits: std well above 1), `checks` and `passed`. TF32 is off while it runs (the
    fp32 reference must be fp32) and restored after."""
    from transformers import AutoModelForCausalLM

    cfg = json.loads((hf_dir / "config.json").read_text())
    ids = torch.randint(0, cfg["vocab_size"], (batch, seq), generator=torch.Generator().manual_seed(7)).to(device)
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out: dict = {"batch": batch, "seq": seq}
    try:
        with torch.no_grad():
            hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).to(device).eval()
            ref = hf_token_logprobs(hf, ids)
            out["ref_logprob_mean"] = float(ref.mean())
            out["ref_logit_std"] = float(hf(ids[:, :256]).logits.float().std())
            with torch.autocast(device.type, dtype=torch.bfloat16):
                candidates = {"transformers_autocast_bf16": hf_token_logprobs(hf, ids)}
            hf = hf.to(torch.bfloat16)  # for information: all-bf16 weights and activations
            candidates["transformers_pure_bf16"] = hf_token_logprobs(hf, ids)
            del hf
            free()
        for backend in backends:
            worker = make_worker(hf_dir, backend, gbs=batch, mbs=batch)
            worker.model.eval()
            with torch.no_grad():
                candidates[f"megatron_{backend}_bf16"] = worker._token_logprobs(ids)[:, 1:]
                worker.autocast_dtype = None
                candidates[f"megatron_{backend}_fp32"] = worker._token_logprobs(ids)[:, 1:]
            del worker
            free()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved_tf32
    for name, lp in candidates.items():
        diff = (lp.float() - ref).abs()
        out[name] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}
    out["checks"] = logprob_checks(out, backends)
    out["passed"] = all(out["checks"].values())
    return out
