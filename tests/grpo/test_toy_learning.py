"""A toy learning check: with a reward the toy model can reach (emit token 7 within 6 tokens, ~17% by chance),
GRPO raises the mean reward within a few dozen steps."""

import pytest
from grpo_testlib import toy_cfg

from tests.grpo.toy import ToySampler, build_toy_gpt, export_toy_state_dict, make_toy_rollout_fn, toy_rows
from trainer.grpo.loop import GRPOTrainer, total_training_steps
from trainer.interfaces import Components
from trainer.policy.worker import InProcessPolicy

pytestmark = pytest.mark.slow


def test_mean_reward_rises(tmp_path):
    cfg = toy_cfg(
        tmp_path,
        "grpo.max_num_steps=30",
        "grpo.num_prompts_per_step=8",
        "grpo.val_period=10",
        "grpo.val_at_start=false",
        "grpo.max_val_samples=16",
        "checkpointing.enabled=false",
        "policy.train_global_batch_size=32",
        "policy.train_micro_batch_size=8",
        "policy.megatron_cfg.optimizer.lr=0.003",
    )
    train_rows, val_rows = toy_rows(64, seed=0), toy_rows(16, seed=1)
    policy = InProcessPolicy(cfg, build_toy_gpt, export_toy_state_dict, total_training_steps(cfg, len(train_rows)))
    components = Components(
        policy=policy, generation=ToySampler(), rollout_fn=make_toy_rollout_fn(target_token=7, max_new_tokens=6)
    )
    trainer = GRPOTrainer(cfg, train_rows, val_rows, components, refit_dtype="float32", echo=False)
    trainer.fit()
    rewards = [r["train:reward_mean"] for r in trainer.metrics.read() if "train:reward_mean" in r]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"toy reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert first < 0.4
    assert last >= first + 0.3
