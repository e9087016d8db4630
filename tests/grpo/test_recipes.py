"""The seeds' recipes load and carry the seeds' numbers."""

import pytest

from infra.config import load_config
from trainer.grpo.loop import total_training_steps


def test_nemotron_recipe_matches_the_seed():
    c = load_config("grpo_workplace_assistant_nemotron_nano_v2_9b")
    assert (c.grpo.num_prompts_per_step, c.grpo.num_generations_per_prompt, c.grpo.max_num_steps) == (4, 4, 10)
    assert c.policy.megatron_cfg.tensor_model_parallel_size == 8
    opt = c.policy.megatron_cfg.optimizer
    assert (opt.lr, opt.min_lr, opt.weight_decay, opt.clip_grad) == (5e-6, 5e-7, 0.01, 1.0)
    assert c.policy.max_total_sequence_length == 32768 and c.env.max_steps == 6


@pytest.mark.parametrize(
    "name,prompts,gens,steps",
    [
        ("grpo_workplace_assistant_qwen3_4binstruct_test_001", 4, 4, 5),
        ("grpo_workplace_assistant_qwen3_4binstruct_test_002", 32, 8, 36),  # one epoch of 1129 rows
        ("grpo_workplace_assistant_qwen3_4binstruct", 64, 16, 18),
    ],
)
def test_qwen_sizes(name, prompts, gens, steps):
    c = load_config(name)
    assert (c.grpo.num_prompts_per_step, c.grpo.num_generations_per_prompt) == (prompts, gens)
    assert total_training_steps(c, 1129) == steps
    assert c.policy.train_global_batch_size == prompts * gens
    assert c.policy.megatron_cfg.tensor_model_parallel_size == 2 and c.env.tool_format == "hermes"
    assert c.loss_fn.reference_policy_kl_penalty == 0
