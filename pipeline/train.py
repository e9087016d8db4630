"""The `train` stage: GRPO on the prepared data; artifacts under `<run.root>/train/`.

    checkpoints/step_N/   top-k checkpoints (resumed from automatically)
    metrics.jsonl, reward_accuracy.png, wandb/
    hf_model/             the final policy as a Hugging Face directory (for eval / serving)
    manifest.json         written last, only when training completed (not when it stopped for preemption)

Ray: a local instance here, or the Ray-on-Slurm cluster the job started (`address=auto`) on several nodes.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

from omegaconf import DictConfig

from pipeline.config import run_root


def run(cfg: DictConfig) -> Path:
    from pipeline import manifest
    from pipeline.distributed import init_ray
    from pipeline.grpo.trainer import GRPOTrainer, total_training_steps
    from pipeline.io import read_jsonl

    timer = manifest.StageTimer()
    root = run_root(cfg)
    out_dir = root / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, val_path = root / "prepare" / "train_prepare.jsonl", root / "prepare" / "validation_prepare.jsonl"
    for path in (train_path, val_path):
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run the prepare stage first (make submit-prepare)")
    train_rows, val_rows = read_jsonl(train_path), read_jsonl(val_path)
    timer.phase("read_data")

    init_ray(address=ray_address(cfg))
    model_dir = initial_model_dir(cfg)
    components = build_components(cfg, model_dir, total_training_steps(cfg, len(train_rows)))
    timer.phase("start_workers")
    trainer = GRPOTrainer(cfg, train_rows, val_rows, refit_dtype=refit_dtype(cfg), **components)
    result = trainer.fit()
    timer.phase("train")
    if result.status != "completed":
        print(f"[train] stopped at step {result.step} ({result.status}); resubmit to resume", flush=True)
        return out_dir
    hf_dir = components["policy"].save_hf_model(model_dir, out_dir / "hf_model", export_dtype(cfg))
    timer.phase("export_hf_model")
    components["generation"].shutdown()
    components["policy"].shutdown()
    outputs = [p for p in (out_dir / "metrics.jsonl", out_dir / "reward_accuracy.png", hf_dir) if p.exists()]
    manifest.write_manifest(cfg, "train", inputs=[train_path, val_path], outputs=outputs, timer=timer, extra={
        "steps": result.step,
        "initial_model": str(model_dir),
        "latest_checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
        "final_metrics": {k: v for k, v in result.final_metrics.items() if not k.startswith("timing/")},
    })
    return out_dir


def ray_address(cfg: DictConfig) -> str | None:
    """The Ray cluster this job started for us (`jobs.ray_cluster` exports RAY_ADDRESS), 'auto' inside a
    multi-node Slurm job that did not, else None: a private local instance.

    Not `cluster.num_nodes`: that sizes the train job, and sanity/sft/eval run on one node under the same config;
    'auto' there would join any Ray cluster that happens to run on the host (another job's)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    if int(os.environ.get("SLURM_JOB_NUM_NODES", "1") or 1) > 1:
        return "auto"
    return None


def initial_model_dir(cfg: DictConfig) -> Path:
    """The warm-started model when the sft stage ran, else `policy.model_name` resolved to a local HF dir."""
    from pipeline.models.hub import resolve_model

    sft_model = run_root(cfg) / "sft" / "hf_model"
    if cfg.get("sft") and cfg.sft.get("enabled") and (sft_model / "config.json").exists():
        return sft_model
    return resolve_model(cfg.policy.model_name, run_root(cfg) / "models",
                         tiny_cfg=cfg.policy.get("tiny"), seed=int(cfg.run.seed))


def _torch_dtype_name(precision: str) -> str:
    return "bfloat16" if str(precision) in ("bfloat16", "bf16") else "float32"


def refit_dtype(cfg: DictConfig) -> str:
    """Weights travel to the engines in the engines' own dtype (`policy.generation.vllm_cfg.precision`)."""
    from pipeline.generation.vllm_worker import EngineSettings

    return _torch_dtype_name(EngineSettings.from_cfg(cfg).dtype)


def export_dtype(cfg: DictConfig) -> str:
    """The exported HF model keeps the policy's precision."""
    return _torch_dtype_name(cfg.policy.precision)


def build_components(cfg: DictConfig, model_dir: Path, total_steps: int) -> dict:
    """Policy actors (Megatron-core), generation engines (vLLM or torch), tokenizer and the rollout function."""
    from transformers import AutoTokenizer

    from pipeline.generation import make_generation
    from pipeline.grpo.policy import PolicyGroup
    from pipeline.grpo.rollout import collect_rollouts
    from pipeline.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from pipeline.sft import expert_rollouts

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    policy = PolicyGroup(cfg, functools.partial(build_megatron_model, str(model_dir)), export_hf_state_dict,
                         total_steps)
    generation = make_generation(cfg, str(model_dir))
    return {"policy": policy, "generation": generation, "rollout_fn": collect_rollouts, "tokenizer": tokenizer,
            "expert_fn": functools.partial(expert_rollouts, tokenizer=tokenizer, cfg=cfg)}
