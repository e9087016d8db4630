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


def test_nemotron_recipe_takes_the_references_values():
    """NeMo RL's nemo_gym file: constant LR after a 13-step warm-up from 5e-7, activation checkpointing, an fp32
    Mamba state cache, vLLM at 0.8 of the GPU; checkpoints where validation scores them."""
    c = load_config("grpo_workplace_assistant_nemotron_nano_v2_9b")
    sched = c.policy.megatron_cfg.scheduler
    assert (sched.lr_decay_style, sched.lr_warmup_iters, sched.lr_warmup_init) == ("constant", 13, 5e-7)
    assert c.policy.megatron_cfg.activation_checkpointing is True
    vllm = c.policy.generation.vllm_cfg
    assert (vllm.mamba_ssm_cache_dtype, vllm.gpu_memory_utilization) == ("float32", 0.8)
    assert c.policy.generation.max_new_tokens == c.policy.max_total_sequence_length
    assert (c.policy.train_micro_batch_size, c.policy.logprob_batch_size) == (1, 1)
    assert c.checkpointing.save_period == c.grpo.val_period and c.checkpointing.keep_top_k == 3


def test_nemotron_warm_up_runs_from_its_initial_lr_and_stays_constant_after():
    import torch

    from trainer.policy.optim import build_scheduler

    c = load_config("grpo_workplace_assistant_nemotron_nano_v2_9b")
    mcfg = c.policy.megatron_cfg
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=mcfg.optimizer.lr)
    scheduler = build_scheduler(optimizer, mcfg.optimizer, mcfg.scheduler, total_steps=10)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(1)
    assert lrs[0] == pytest.approx(5e-7) and lrs[9] < 4e-6
    assert lrs[13:] == [pytest.approx(5e-6)] * 7


def test_nemotron_plan_counts_the_hybrid_model_layer_by_layer():
    """One 8-GPU node: the NemotronH shape from its config (27 Mamba, 4 attention, 25 MLP layers; the published
    8.89e9 parameters), under 80 GB in both phases."""
    from trainer.placement import ModelShape, plan_for

    c = load_config("grpo_workplace_assistant_nemotron_nano_v2_9b")
    plan = plan_for(c)
    assert plan.shape is not None and plan.shape.num_params == pytest.approx(8.89e9, rel=1e-3)
    assert len(plan.shape.layer_activations) == 56 and len(set(plan.shape.layer_activations)) == 3
    text = plan.describe()
    assert "policy TP 8 x PP 1 x DP 1 on 8 GPU(s); 1 engine(s) of TP 8" in text and "memory estimate" in text
    assert all(m.training < m.generation < 80 for m in plan.memory.values())
    # a dense decoder's estimate is unchanged: (10 + 24/TP) x hidden a token and layer
    dense = ModelShape(1000, 4, 64, 100)
    assert dense.activation_bytes(2) == [(10 + 12) * 64] * 4


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


QWEN = [
    "grpo_workplace_assistant_qwen3_4binstruct",
    "grpo_workplace_assistant_qwen3_4binstruct_test_001",
    "grpo_workplace_assistant_qwen3_4binstruct_test_002",
]


@pytest.mark.parametrize("name", QWEN)
def test_qwen_recipes_take_the_references_values(name):
    """What the seed guide states and NeMo RL's recipe sets (its live DTensor path: AdamW 1e-6 constant, TP 2,
    activation checkpointing; vLLM TP 1 at 0.8 of the GPU; 32,768 tokens in total; KL off)."""
    c = load_config(name)
    assert c.policy.model_name == "Qwen/Qwen3-4B-Instruct-2507" and c.policy.precision == "bfloat16"
    assert c.policy.max_total_sequence_length == 32768
    assert c.policy.generation.max_new_tokens == 32768  # the whole context, not a per-turn cap
    assert c.policy.generation.vllm_cfg.max_model_len == 32768
    assert (c.policy.train_micro_batch_size, c.policy.logprob_batch_size, c.policy.max_grad_norm) == (1, 1, 1.0)
    mcfg = c.policy.megatron_cfg
    assert (mcfg.tensor_model_parallel_size, mcfg.pipeline_model_parallel_size) == (2, 1)
    assert mcfg.activation_checkpointing is True and mcfg.sequence_parallel is False
    opt = mcfg.optimizer
    assert (opt.lr, opt.weight_decay, opt.adam_beta1, opt.adam_beta2, opt.adam_eps) == (1e-6, 0.01, 0.9, 0.999, 1e-8)
    assert (mcfg.scheduler.lr_decay_style, mcfg.scheduler.lr_warmup_iters) == ("constant", 0)
    gen = c.policy.generation
    assert (gen.temperature, gen.top_p, gen.top_k) == (1.0, 1.0, None)
    assert (gen.vllm_cfg.tensor_parallel_size, gen.vllm_cfg.gpu_memory_utilization) == (1, 0.8)
    assert gen.colocated.enabled is True
    loss = c.loss_fn
    assert (loss.reference_policy_kl_penalty, loss.ratio_clip_min, loss.ratio_clip_max) == (0, 0.2, 0.2)
    assert loss.token_level_loss is True
    assert c.grpo.normalize_rewards and c.grpo.use_leave_one_out_baseline and c.grpo.max_rollout_turns == 1
    assert c.env.max_steps == 6 and c.grpo.seed == 42
    assert (c.checkpointing.metric_name, c.checkpointing.higher_is_better) == ("val:accuracy", True)
    assert c.checkpointing.keep_top_k == 3


@pytest.mark.parametrize(
    "name,val_period,val_at_start,checkpoints,save_period,nodes",
    [
        ("grpo_workplace_assistant_qwen3_4binstruct", 10, True, True, 1, 8),
        ("grpo_workplace_assistant_qwen3_4binstruct_test_001", 10, False, False, 1, 1),
        ("grpo_workplace_assistant_qwen3_4binstruct_test_002", 36, False, True, 36, 1),
    ],
)
def test_qwen_recipes_validate_and_save_as_the_seed_guide_says(
    name, val_period, val_at_start, checkpoints, save_period, nodes
):
    c = load_config(name)
    assert (c.grpo.val_period, c.grpo.val_at_start) == (val_period, val_at_start)
    assert (c.checkpointing.enabled, c.checkpointing.save_period) == (checkpoints, save_period)
    assert (c.cluster.num_nodes, c.cluster.gpus_per_node) == (nodes, 8)


GPU_RECIPES = [*QWEN, "grpo_workplace_assistant_nemotron_nano_v2_9b"]


@pytest.mark.parametrize("name", GPU_RECIPES)
@pytest.mark.parametrize("nodes", [1, 8])
def test_gpu_recipes_place_on_one_and_on_eight_nodes_of_80_gb(name, nodes):
    """Every rank its own GPU, TP groups inside a node, the memory estimate under the card, and Slurm asked for
    the CPUs the node's actors need."""
    from trainer.placement import plan_for

    c = load_config(name, [f"cluster.num_nodes={nodes}"])  # num_engines null: as many as the GPUs hold
    plan = plan_for(c)
    assert len(set(plan.policy_gpus)) == len(plan.policy_gpus) == 8 * nodes
    tp = c.policy.megatron_cfg.tensor_model_parallel_size
    assert all(len({g.node for g in plan.policy_gpus[r : r + tp]}) == 1 for r in range(0, 8 * nodes, tp))
    assert all(len({g.node for g in group}) == 1 for group in plan.engine_gpus)
    assert max(m.peak for m in plan.memory.values()) <= c.cluster.gpu_memory_gib
    actors_per_node = 8 + len(plan.engine_gpus) // nodes
    assert c.slurm.cpus_per_task >= actors_per_node
