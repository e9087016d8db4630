"""What a GRPO run is built from: the model to start from and the workers (policy, generation) over it.

The train, sanity and eval stages all start from the same place: the warm-started model when the sft stage
ran, else `policy.model_name`; and they build their policy and generation engines the same way.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig

from infra.config import run_root
from trainer.interfaces import Components


def initial_model_dir(cfg: DictConfig) -> Path:
    """The warm-started model when the sft stage ran, else `policy.model_name` resolved to a local HF dir."""
    from trainer.models.hub import resolve_model

    sft_model = run_root(cfg) / "sft" / "hf_model"
    if cfg.sft.enabled and (sft_model / "config.json").exists():
        return sft_model
    return resolve_model(
        cfg.policy.model_name, run_root(cfg) / "models", tiny_cfg=cfg.policy.tiny, seed=int(cfg.run.seed)
    )


def _torch_dtype_name(precision: str) -> str:
    return "bfloat16" if str(precision) in ("bfloat16", "bf16") else "float32"


def refit_dtype(cfg: DictConfig) -> str:
    """Weights travel to the engines in the engines' own dtype (`policy.generation.vllm_cfg.precision`)."""
    from trainer.generation.vllm_worker import EngineSettings

    return _torch_dtype_name(EngineSettings.from_cfg(cfg).dtype)


def export_dtype(cfg: DictConfig) -> str:
    """The exported HF model keeps the policy's precision."""
    return _torch_dtype_name(cfg.policy.precision)


def build_components(cfg: DictConfig, model_dir: Path, total_steps: int) -> Components:
    """Policy actors (Megatron-core), generation engines (vLLM or torch), tokenizer, the rollout function and the
    expert trajectories (for prompt selection). `Components.shutdown()` stops the workers."""
    from transformers import AutoTokenizer

    from trainer.expert import expert_rollouts
    from trainer.generation import make_generation
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import PolicyGroup
    from trainer.ray_placement import reserve_for
    from trainer.refit import refit_transport
    from trainer.rollout import collect_rollouts

    transport = refit_transport(cfg)  # a config that cannot refit fails before any actor starts
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    placement = reserve_for(cfg)  # GPUs: the plan printed and held before any actor starts
    policy = PolicyGroup(
        cfg,
        functools.partial(build_megatron_model, str(model_dir)),
        export_hf_state_dict,
        total_steps,
        placement=placement,
    )
    generation = make_generation(cfg, str(model_dir), placement=placement)
    return Components(
        policy=policy,
        generation=generation,
        rollout_fn=collect_rollouts,
        tokenizer=tokenizer,
        expert_fn=functools.partial(expert_rollouts, tokenizer=tokenizer, cfg=cfg),
        placement=placement,
        refit_transport=transport,
    )
