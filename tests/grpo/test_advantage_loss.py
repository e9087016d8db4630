"""GRPO advantage and loss math against hand-computed values."""

import math

import pytest
import torch

from trainer.grpo.advantage import compute_advantages
from trainer.grpo.loss import LossConfig, clipped_pg_loss, kl_estimate, reduce_loss_stats


def test_leave_one_out_normalised_by_std_of_the_others():
    # group A = [1, 0, 0, 0]; group B = [1, 1] (others identical: std 0); group C: single sample
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.7])
    groups = torch.tensor([5, 5, 5, 5, 9, 9, 2])
    adv = compute_advantages(rewards, groups, leave_one_out=True, normalize=True)
    # sample 0: others [0,0,0] -> baseline 0, std 0 -> not normalised: 1
    assert adv[0].item() == pytest.approx(1.0)
    # sample 1: others [1,0,0] -> baseline 1/3, unbiased std sqrt(1/3)
    expected = (0 - 1 / 3) / (math.sqrt(1 / 3) + 1e-6)
    for i in (1, 2, 3):
        assert adv[i].item() == pytest.approx(expected, rel=1e-6)
    assert adv[4].item() == 0.0 and adv[5].item() == 0.0
    assert adv[6].item() == 0.0  # lone sample of its prompt


def test_plain_mean_baseline_without_normalisation():
    rewards = torch.tensor([2.0, 0.0, 1.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1])
    adv = compute_advantages(rewards, groups, leave_one_out=False, normalize=False)
    assert adv.tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])
    adv_n = compute_advantages(rewards, groups, leave_one_out=False, normalize=True)
    # unbiased std of [2, 0] is sqrt(2)
    assert adv_n[0].item() == pytest.approx(1 / (math.sqrt(2) + 1e-6), rel=1e-6)


def test_loo_group_of_three_matches_formula():
    r = torch.tensor([0.2, 0.5, 0.9])
    adv = compute_advantages(r, torch.zeros(3, dtype=torch.long))
    for i in range(3):
        others = [r[j].item() for j in range(3) if j != i]
        mean = sum(others) / 2
        std = math.sqrt(sum((o - mean) ** 2 for o in others) / 1)
        assert adv[i].item() == pytest.approx((r[i].item() - mean) / (std + 1e-6), rel=1e-5)


def test_equal_nonbinary_rewards_give_zero_advantage():
    adv = compute_advantages(torch.full((4,), 0.3), torch.zeros(4, dtype=torch.long))
    assert torch.all(adv == 0)


def test_clipped_loss_hand_values():
    cfg = LossConfig(ratio_clip_min=0.2, ratio_clip_max=0.2)
    prev = torch.zeros(1, 4)
    cur = torch.log(torch.tensor([[1.5, 0.5, 1.1, 9.0]]))  # ratios 1.5, 0.5, 1.1, (masked)
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    loss, stats = clipped_pg_loss(cfg, cur, prev, adv, mask, global_valid_tokens=6.0)
    # token 0: A=1, r=1.5 -> max(-1.5, -1.2) = -1.2 ; token 1: A=1, r=.5 -> max(-.5, -.8) = -.5
    # token 2: A=-2, r=1.1 -> max(2.2, 2.2) = 2.2 ; token 3 masked
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 6.0, rel=1e-6)
    assert stats["probs_ratio_clamped"].item() == 2
    assert stats["probs_ratio_min"].item() == pytest.approx(0.5)
    assert stats["probs_ratio_max"].item() == pytest.approx(1.5)


def test_dual_clip_caps_negative_advantage_loss():
    cfg = LossConfig(ratio_clip_c=3.0)
    cur = torch.log(torch.tensor([[10.0]]))
    loss, _ = clipped_pg_loss(cfg, cur, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), 1.0)
    assert loss.item() == pytest.approx(3.0)  # would be 10 without the dual clip
    loss_nc, _ = clipped_pg_loss(LossConfig(), cur, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), 1.0)
    assert loss_nc.item() == pytest.approx(10.0)


def test_k3_kl_and_clamps():
    lp, ref = torch.tensor([-1.0]), torch.tensor([-2.0])
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(math.exp(-1) - 1 + 1)
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([50.0]), "k3", 20, 10).item() == 10.0
    cfg = LossConfig(reference_policy_kl_penalty=0.5)
    cur = torch.tensor([[-1.0]], requires_grad=True)
    loss, stats = clipped_pg_loss(
        cfg, cur, cur.detach(), torch.tensor([0.0]), torch.ones(1, 1), 1.0, reference_logprobs=torch.tensor([[-2.0]])
    )
    assert loss.item() == pytest.approx(0.5 * math.exp(-1))
    assert stats["kl_penalty_sum"].item() == pytest.approx(0.5 * math.exp(-1))
    with pytest.raises(ValueError, match="reference"):
        clipped_pg_loss(cfg, cur, cur.detach(), torch.tensor([0.0]), torch.ones(1, 1), 1.0)


def test_microbatch_split_gives_same_gradient():
    torch.manual_seed(0)
    B, S = 6, 7
    base = torch.randn(B, S)
    prev = base + 0.1 * torch.randn(B, S)
    mask = (torch.rand(B, S) > 0.3).float()
    adv = torch.randn(B)
    cfg = LossConfig()
    tokens = mask.sum().item()
    full = base.clone().requires_grad_(True)
    clipped_pg_loss(cfg, full, prev, adv, mask, tokens)[0].backward()
    split = base.clone().requires_grad_(True)
    parts = []
    for sl in (slice(0, 1), slice(1, 4), slice(4, 6)):
        loss, st = clipped_pg_loss(cfg, split[sl], prev[sl], adv[sl], mask[sl], tokens)
        loss.backward()
        parts.append(st)
    assert torch.allclose(full.grad, split.grad, atol=1e-7)
    total = clipped_pg_loss(cfg, base, prev, adv, mask, tokens)[0].item()
    assert reduce_loss_stats(parts, tokens)["loss"] == pytest.approx(total, rel=1e-5)


def test_token_mult_prob_error_is_one_when_generation_matches():
    lp = torch.randn(2, 3)
    _, st = clipped_pg_loss(LossConfig(), lp, lp, torch.zeros(2), torch.ones(2, 3), 6.0, generation_logprobs=lp)
    assert reduce_loss_stats([st], 6.0)["token_mult_prob_error"] == pytest.approx(1.0)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="ratio_clip_c"):
        LossConfig.from_cfg({"ratio_clip_c": 0.5})


def test_sequence_level_weights_per_optimizer_step():
    from trainer.grpo.advantage import sequence_level_weights

    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]])
    w = sequence_level_weights(mask, rows_per_step=2)
    # step 1: rows of 3 and 1 tokens (4 in all, 2 rows); step 2: one trained row of 2 tokens
    assert w.tolist() == pytest.approx([4 / (3 * 2), 4 / (1 * 2), 0.0, 1.0])
    assert float((w[:2] * mask[:2].sum(1)).sum()) == pytest.approx(float(mask[:2].sum()))  # tokens' total weight kept
