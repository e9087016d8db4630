"""GRPO advantages: a per-prompt-group baseline, optionally normalised by the group's reward spread.

Groups are the rollouts of one prompt (the `num_generations_per_prompt` samples). The leave-one-out
baseline (RLOO) compares each sample with the mean of the *other* samples of its group, which keeps
the estimate unbiased; the std is the unbiased std of that same set. All of it is vectorised over
the batch with scatter sums, so it costs the same for 16 or 16k rollouts.
"""

from __future__ import annotations

import torch


def compute_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    leave_one_out: bool = True,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Return one scalar advantage per rollout.

    rewards:   float [N]; group_ids: int [N], equal for rollouts of the same prompt (any labels).
    A group with a single rollout has no baseline to compare against: its advantage is 0.
    With `normalize`, the advantage is divided by (std + eps) only where std > 0, so groups whose
    samples all got the same reward keep advantage 0 and a lone different sample is not blown up by 1/eps.
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards and group_ids must be 1-D of equal length, got {tuple(rewards.shape)} "
            f"and {tuple(group_ids.shape)}"
        )
    rewards = rewards.to(torch.float64)
    _, dense_ids = torch.unique(group_ids, return_inverse=True)
    num_groups = int(dense_ids.max().item()) + 1 if rewards.numel() else 0
    count = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, dense_ids, torch.ones_like(rewards))
    total = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, dense_ids, rewards)
    total_sq = torch.zeros(num_groups, dtype=torch.float64).index_add_(0, dense_ids, rewards * rewards)

    n, s, q = count[dense_ids], total[dense_ids], total_sq[dense_ids]
    if leave_one_out:  # statistics of the other samples of the group
        m, s, q = n - 1, s - rewards, q - rewards * rewards
    else:
        m = n
    has_baseline = n > 1
    safe_m = m.clamp(min=1)
    baseline = torch.where(has_baseline, s / safe_m, rewards)
    mean_sq = q / safe_m
    # unbiased variance over the m samples: (E[r^2] - E[r]^2) * m / (m - 1); zero when m < 2
    var = ((mean_sq - baseline * baseline) * m / (m - 1).clamp(min=1)).clamp(min=0)
    var = torch.where(var < 1e-12, torch.zeros_like(var), var)  # rounding noise of equal rewards is not spread
    std = torch.where(m > 1, var.sqrt(), torch.zeros_like(var))

    advantages = rewards - baseline
    if normalize:
        advantages = torch.where(std > 0, advantages / (std + eps), advantages)
    return torch.where(has_baseline, advantages, torch.zeros_like(advantages)).to(torch.float32)


def sequence_level_weights(loss_mask: torch.Tensor, rows_per_step: int) -> torch.Tensor:
    """Per-row factors that turn the token-level loss into the sequence-level one (`loss_fn.token_level_loss:
    false`): the mean over rollouts of each rollout's token mean.

    The policy loss of an optimizer step is sum over tokens of A_r * ratio / T (T: the step's trained tokens).
    Scaling row r's advantage by T / (L_r * R) (L_r: its trained tokens, R: the step's rows) gives
    sum_r (1 / R) * mean over r's tokens of A_r * ratio: every rollout weighs the same, however long. The
    clipping depends only on the advantage's sign, so the scaled loss is exact; rows are grouped in optimizer
    steps of `rows_per_step` as the policy trains them. Rows without trained tokens get 0.
    """
    tokens = loss_mask.sum(dim=1).to(torch.float64)
    weights = torch.zeros_like(tokens)
    for start in range(0, len(tokens), max(1, rows_per_step)):
        step = slice(start, start + rows_per_step)
        counts = tokens[step]
        has = counts > 0
        if has.any():
            weights[step] = torch.where(has, counts.sum() / (counts.clamp(min=1) * has.sum()), weights[step])
    return weights.to(torch.float32)
