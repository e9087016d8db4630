"""Shared helpers for the GRPO tests: an in-process policy worker on the toy Megatron GPT, the toy config.

(A uniquely named module rather than conftest.py: several test folders are on sys.path at once.)
"""

import functools
import os

import torch

from tests.grpo.toy import build_toy_gpt, export_toy_state_dict

POLICY_CFG = {
    "train_global_batch_size": 8,
    "train_micro_batch_size": 2,
    "logprob_batch_size": 4,
    "precision": "float32",
    "max_grad_norm": 1.0,
    "logits_only_where_loss": True,  # these four as in configs/base.yaml
    "pack_shared_prefixes": True,
    "pack_min_shared_tokens": 32,
    "offload_optimizer_for_generation": False,
    "megatron_cfg": {
        "tensor_model_parallel_size": 1,
        "pipeline_model_parallel_size": 1,
        "overlap_grad_reduce": None,
        "grad_reduce_bucket_mb": 40,
        "optimizer": {
            "optimizer": "adam",
            "lr": 1e-2,
            "min_lr": 1e-3,
            "weight_decay": 0.01,
            "adam_beta1": 0.9,
            "adam_beta2": 0.999,
            "adam_eps": 1e-8,
        },
        "scheduler": {"lr_decay_style": "cosine", "lr_warmup_iters": 0, "lr_decay_iters": None},
    },
}
LOSS_CFG = {
    "ratio_clip_min": 0.2,
    "ratio_clip_max": 0.2,
    "ratio_clip_c": None,
    "reference_policy_kl_penalty": 0.0,
    "reference_policy_kl_type": "k3",
    "kl_input_clamp_value": 20.0,
    "kl_output_clamp_value": 10.0,
    "token_level_loss": True,
}


def make_worker(policy_overrides=None, loss_overrides=None, total_steps=10, seed=1):
    from trainer.policy.worker import PolicyWorker

    cfg = {**POLICY_CFG, **(policy_overrides or {})}
    worker = PolicyWorker(
        cfg,
        {**LOSS_CFG, **(loss_overrides or {})},
        functools.partial(build_toy_gpt, seed=seed),
        export_toy_state_dict,
        total_steps=total_steps,
        rank=0,
        world_size=1,
    )
    worker.setup("127.0.0.1", int(os.environ.get("GRPO_TEST_PORT", "29533")))
    return worker


def random_batch(n=8, seq=12, vocab=32, seed=0, group=1):
    """Rollout-shaped batch: prompts of 3 tokens (the same for each `group` consecutive rows, as a GRPO group's
    rollouts), responses of varied length, right padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, seq), generator=g)
    ids[:, :3] = ids[::group, :3].repeat_interleave(group, dim=0)[:n]
    lengths = torch.randint(6, seq + 1, (n,), generator=g)
    mask = torch.zeros(n, seq)
    for i, L in enumerate(lengths.tolist()):
        ids[i, L:] = 0
        mask[i, 3:L] = 1
    return {"input_ids": ids, "input_lengths": lengths, "loss_mask": mask, "advantages": torch.randn(n, generator=g)}


def toy_cfg(tmp_path, *extra):
    """tiny_cpu with the toy trainer's sizes (4 prompts x 4 generations, 6 steps, val/save every 2)."""
    from infra.config import load_config

    return load_config(
        "tiny_cpu",
        [
            f"run.root={tmp_path}",
            "grpo.num_prompts_per_step=4",
            "grpo.num_generations_per_prompt=4",
            "grpo.max_num_steps=6",
            "grpo.max_num_epochs=10",
            "grpo.val_period=2",
            "grpo.max_val_samples=6",
            "grpo.val_at_start=true",
            "checkpointing.save_period=2",
            "checkpointing.keep_top_k=2",
            "logger.wandb_enabled=false",
            "policy.train_global_batch_size=16",
            "policy.train_micro_batch_size=4",
            "policy.logprob_batch_size=8",
            "policy.megatron_cfg.optimizer.lr=0.01",
            "policy.megatron_cfg.optimizer.min_lr=0.001",
            "policy.generation.temperature=1.0",
            "grpo.prompt_selection.pool_factor=1",
            *extra,
        ],
    )  # toy rows have no expert trajectories
