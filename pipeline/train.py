"""The `train` stage: GRPO on the prepared data; artifacts under `<run.root>/train/`.

    checkpoints/step_N/   top-k checkpoints (resumed from automatically)
    metrics.jsonl, reward_accuracy.png, wandb/
    hf_model/             the final policy as a Hugging Face directory (for eval / serving)
    manifest.json         written last, only when training completed (not when it stopped for preemption)

Ray: a local instance here, or the Ray-on-Slurm cluster the job started (`address=auto`) on several nodes.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from infra.config import run_root


def run(cfg: DictConfig) -> Path:
    from infra import manifest
    from infra.io import read_jsonl
    from trainer.components import build_components, export_dtype, initial_model_dir, refit_dtype
    from trainer.distributed import init_ray, ray_address
    from trainer.grpo.loop import GRPOTrainer, total_training_steps

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
    trainer = GRPOTrainer(cfg, train_rows, val_rows, components, refit_dtype=refit_dtype(cfg))
    result = trainer.fit()
    timer.phase("train")
    if result.status != "completed":
        print(f"[train] stopped at step {result.step} ({result.status}); resubmit to resume", flush=True)
        return out_dir
    hf_dir = components.policy.save_hf_model(model_dir, out_dir / "hf_model", export_dtype(cfg))
    timer.phase("export_hf_model")
    components.shutdown()
    outputs = [p for p in (out_dir / "metrics.jsonl", out_dir / "reward_accuracy.png", hf_dir) if p.exists()]
    manifest.write_manifest(
        cfg,
        "train",
        inputs=[train_path, val_path],
        outputs=outputs,
        timer=timer,
        extra={
            "steps": result.step,
            "initial_model": str(model_dir),
            "latest_checkpoint": str(result.checkpoint) if result.checkpoint else None,
            "best_checkpoint": str(result.best_checkpoint) if result.best_checkpoint else None,
            "final_metrics": {k: v for k, v in result.final_metrics.items() if not k.startswith("timing/")},
        },
    )
    return out_dir
