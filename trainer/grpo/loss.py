"""The GRPO policy loss: clipped importance ratio (PPO style) plus an optional k1/k2/k3 KL term.

Token-level aggregation: every micro-batch returns sum(token losses) / `global_valid_tokens`, where
`global_valid_tokens` counts the valid tokens of the whole optimizer step (all micro-batches, all
data-parallel ranks). Summing the micro-batch gradients then gives exactly the gradient of the
step's token mean, whatever the micro-batch size or DP layout. (GRPO's sequence-level aggregation,
`token_level_loss: false`, reweights the advantages instead: `advantage.sequence_level_weights`.)
Log-prob tensors are aligned with the tokens: `logprobs[b, t] = log p(token[b, t] | tokens[b, :t])`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LossConfig:
    ratio_clip_min: float = 0.2
    ratio_clip_max: float = 0.2
    ratio_clip_c: float | None = None  # dual clip (> 1): caps the loss of negative-advantage tokens
    reference_policy_kl_penalty: float = 0.0
    reference_policy_kl_type: str = "k3"
    kl_input_clamp_value: float | None = 20.0
    kl_output_clamp_value: float | None = 10.0

    @classmethod
    def from_cfg(cls, loss_cfg: Mapping) -> LossConfig:
        """Build from the `loss_fn` config section (unknown keys such as token_level_loss are ignored)."""
        fields = {k: loss_cfg[k] for k in cls.__dataclass_fields__ if k in loss_cfg}
        cfg = cls(**fields)
        if cfg.ratio_clip_c is not None and cfg.ratio_clip_c <= 1:
            raise ValueError(f"loss_fn.ratio_clip_c must be > 1 (or null), got {cfg.ratio_clip_c}")
        if cfg.reference_policy_kl_type not in ("k1", "k2", "k3"):
            raise ValueError(f"loss_fn.reference_policy_kl_type must be k1|k2|k3, got {cfg.reference_policy_kl_type!r}")
        if not loss_cfg["token_level_loss"] and cfg.uses_reference:
            raise ValueError(
                "loss_fn.token_level_loss=false with reference_policy_kl_penalty != 0 is not "
                "implemented (sequence-level weights apply to the policy-gradient term only)"
            )
        return cfg

    @property
    def uses_reference(self) -> bool:
        return self.reference_policy_kl_penalty != 0


def kl_estimate(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kl_type: str = "k3",
    input_clamp: float | None = 20.0,
    output_clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token log-probs (Schulman's k1/k2/k3)."""
    log_ratio = ref_logprobs - logprobs
    if input_clamp is not None:
        log_ratio = log_ratio.clamp(-input_clamp, input_clamp)
    if kl_type == "k1":
        kl = -log_ratio
    elif kl_type == "k2":
        kl = 0.5 * log_ratio.square()
    elif kl_type == "k3":
        kl = torch.exp(log_ratio) - 1 - log_ratio
    else:
        raise ValueError(f"unknown KL type {kl_type!r}")
    if output_clamp is not None:
        kl = kl.clamp(-output_clamp, output_clamp)
    return kl


def clipped_pg_loss(
    cfg: LossConfig,
    logprobs: torch.Tensor,
    prev_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    global_valid_tokens: float,
    generation_logprobs: torch.Tensor | None = None,
    reference_logprobs: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one micro-batch and its diagnostics as *sums* (so they add up across micro-batches/ranks).

    logprobs: [B, S] current policy (with grad); prev_logprobs / generation_logprobs / reference_logprobs:
    [B, S] (no grad); advantages: [B] (broadcast over tokens) or [B, S]; mask: [B, S] 1 on trained tokens.
    Returns (loss, stats) with stats = {loss, probs_ratio_sum, probs_ratio_min, probs_ratio_max,
    probs_ratio_clamped, kl_penalty, token_mult_prob_error_sum, valid_tokens, logprob_sum}; divide the *_sum entries and
    the clamped count by the global valid tokens to get means.
    """
    if global_valid_tokens <= 0:
        raise ValueError("global_valid_tokens must be positive (a step with no trainable tokens)")
    mask = mask.to(logprobs.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = advantages.to(logprobs.dtype).expand_as(logprobs)
    prev_logprobs = prev_logprobs.to(logprobs.dtype)

    # masked positions may hold garbage log-probs (padding): zero the log-ratio there to avoid inf * 0
    log_ratio = torch.where(mask > 0, logprobs - prev_logprobs, torch.zeros_like(logprobs))
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1 - cfg.ratio_clip_min, 1 + cfg.ratio_clip_max)
    token_loss = torch.maximum(-advantages * ratio, -advantages * clipped_ratio)
    if cfg.ratio_clip_c is not None:
        token_loss = torch.where(advantages < 0, torch.minimum(token_loss, -advantages * cfg.ratio_clip_c), token_loss)

    kl = torch.zeros_like(logprobs)
    if cfg.uses_reference:
        if reference_logprobs is None:
            raise ValueError("reference_policy_kl_penalty is set but no reference log-probs were given")
        ref = torch.where(mask > 0, reference_logprobs.to(logprobs.dtype), logprobs.detach())
        kl = cfg.reference_policy_kl_penalty * kl_estimate(
            logprobs, ref, cfg.reference_policy_kl_type, cfg.kl_input_clamp_value, cfg.kl_output_clamp_value
        )
        token_loss = token_loss + kl

    loss = (token_loss * mask).sum() / global_valid_tokens

    with torch.no_grad():
        valid = mask > 0
        r = ratio.detach()
        big = torch.finfo(r.dtype).max
        stats = {
            "loss": loss.detach(),
            "probs_ratio_sum": (r * mask).sum(),
            "probs_ratio_min": torch.where(valid, r, torch.full_like(r, big)).min(),
            "probs_ratio_max": torch.where(valid, r, torch.full_like(r, -big)).max(),
            "probs_ratio_clamped": ((r != clipped_ratio.detach()) & valid).sum().to(r.dtype),
            "kl_penalty_sum": (kl.detach() * mask).sum(),
            "valid_tokens": mask.sum(),
            "logprob_sum": (logprobs.detach() * mask).sum(),
        }
        if generation_logprobs is not None:
            diff = torch.where(valid, (generation_logprobs.to(r.dtype) - prev_logprobs).abs(), torch.zeros_like(r))
            stats["token_mult_prob_error_sum"] = (torch.exp(diff) * mask).sum()
    return loss, stats


def reduce_loss_stats(parts: list[dict[str, torch.Tensor]], global_valid_tokens: float) -> dict[str, float]:
    """Combine micro-batch stats of one optimizer step into means over its valid tokens."""
    if not parts:
        return {}
    total = lambda key: float(sum(float(p[key]) for p in parts))  # noqa: E731
    out = {
        "loss": total("loss"),
        "probs_ratio": total("probs_ratio_sum") / global_valid_tokens,
        "probs_ratio_min": min(float(p["probs_ratio_min"]) for p in parts),
        "probs_ratio_max": max(float(p["probs_ratio_max"]) for p in parts),
        "probs_ratio_clamped": total("probs_ratio_clamped") / global_valid_tokens,
        "kl_penalty": total("kl_penalty_sum") / global_valid_tokens,
    }
    if all("logprob_sum" in p for p in parts):  # mean log-prob of the trained tokens before the update (-NLL)
        out["logprob_mean"] = total("logprob_sum") / global_valid_tokens
    if all("token_mult_prob_error_sum" in p for p in parts):
        out["token_mult_prob_error"] = total("token_mult_prob_error_sum") / global_valid_tokens
    return out
