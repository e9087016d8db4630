"""Stage `eval`: score a model on a task file with the agent loop and the generation backend.

The model is `eval.model`: a Hugging Face model directory, or a training checkpoint `step_N/` (converted to HF
through a policy worker first), or null for this run's trained model (`train/hf_model`, else the best
checkpoint). Tasks are `eval.tasks` (a JSONL of dataset rows) or this run's prepared validation file. Each task
is played `eval.num_generations_per_prompt` times (once by default) at `policy.generation.temperature`, the setting
`val:accuracy` uses during training.

Outputs in `<run.root>/eval/`: results.jsonl (one line per episode: id, category, reward, turns, calls),
summary.json (accuracy, per-category accuracy, counts, timings), manifest.json.

Also a command: `python -m pipeline.eval --model DIR --tasks FILE [--config tiny_cpu] [overrides...]`.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from omegaconf import DictConfig

from infra.config import load_config, run_root


def resolve_eval_model(cfg: DictConfig) -> tuple[Path, str]:
    """(HF model dir or checkpoint dir, kind) where kind is 'hf' or 'checkpoint'."""
    from trainer.checkpoint import INFO_FILE, best_checkpoint

    given = cfg.eval.model
    if given:
        path = Path(given).resolve()
        if (path / "config.json").exists():
            return path, "hf"
        if (path / INFO_FILE).exists():
            return path, "checkpoint"
        raise FileNotFoundError(
            f"eval.model={given}: neither a Hugging Face model dir (config.json) "
            f"nor a training checkpoint (training_info.json)"
        )
    trained = run_root(cfg) / "train" / "hf_model"
    if (trained / "config.json").exists():
        return trained, "hf"
    best = best_checkpoint(
        cfg.checkpointing.checkpoint_dir, cfg.checkpointing.metric_name, bool(cfg.checkpointing.higher_is_better)
    )
    if best is not None:
        return best, "checkpoint"
    raise FileNotFoundError(
        f"eval.model is not set and this run has no trained model ({trained}) nor checkpoints "
        f"in {cfg.checkpointing.checkpoint_dir}"
    )


def checkpoint_to_hf(cfg: DictConfig, checkpoint: Path, out_dir: Path) -> Path:
    """Load a `step_N/` checkpoint into policy workers and export it as an HF directory."""
    from trainer.components import initial_model_dir
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import PolicyGroup
    from trainer.ray_placement import reserve_for

    base = initial_model_dir(cfg)
    placement = reserve_for(cfg)
    policy = PolicyGroup(
        cfg, functools.partial(build_megatron_model, str(base)), export_hf_state_dict, 1, placement=placement
    )
    try:
        policy.load(checkpoint / "policy")
        dtype = "bfloat16" if str(cfg.policy.precision) in ("bfloat16", "bf16") else "float32"
        return policy.save_hf_model(base, out_dir, dtype)
    finally:
        policy.shutdown()
        if placement is not None:
            placement.release()


def run(cfg: DictConfig) -> Path:
    from transformers import AutoTokenizer

    from infra import manifest
    from infra.io import atomic_write_json, atomic_write_jsonl, read_jsonl
    from trainer.distributed import init_ray, ray_address
    from trainer.generation import make_generation
    from trainer.metrics import accuracy_summary
    from trainer.ray_placement import reserve_for
    from trainer.rollout import collect_rollouts

    timer = manifest.StageTimer()
    out_dir = run_root(cfg) / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = Path(cfg.eval.tasks) if cfg.eval.tasks else run_root(cfg) / "prepare" / "validation_prepare.jsonl"
    if not tasks.exists():
        raise FileNotFoundError(f"eval tasks {tasks} do not exist (set eval.tasks or run the prepare stage)")
    rows = read_jsonl(tasks)
    repeats = int(cfg.eval.num_generations_per_prompt)
    rows = [row for row in rows for _ in range(repeats)]

    init_ray(address=ray_address(cfg))
    model, kind = resolve_eval_model(cfg)
    model_dir = checkpoint_to_hf(cfg, model, out_dir / "hf_model") if kind == "checkpoint" else model
    timer.phase("resolve_model")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    placement = reserve_for(cfg)
    generation = make_generation(cfg, str(model_dir), placement=placement)
    timer.phase("start_engines")
    try:
        t0 = time.perf_counter()
        rollouts = collect_rollouts(rows, generation, tokenizer, cfg, seed=int(cfg.run.seed))
        seconds = time.perf_counter() - t0
    finally:
        generation.shutdown()
        if placement is not None:
            placement.release()
    timer.phase("rollouts")

    results_path, summary_path = out_dir / "results.jsonl", out_dir / "summary.json"
    atomic_write_jsonl(
        results_path,
        [
            {
                "id": r.row_id,
                "category": r.category,
                "reward": r.reward,
                "turns": r.num_turns,
                "truncated": r.truncated,
                "stop_reason": r.stop_reason,
                "function_calls": r.function_calls,
                "diagnostics": r.verdict,
            }
            for r in rollouts
        ],
    )
    summary = accuracy_summary(rollouts)  # the same accuracy as val:accuracy during training
    summary.update(
        {
            "model": str(model),
            "model_kind": kind,
            "tasks": str(tasks),
            "seconds": round(seconds, 2),
            "episodes_per_sec": round(len(rollouts) / max(seconds, 1e-9), 3),
            "generated_tokens": sum(r.num_generated_tokens for r in rollouts),
        }
    )
    atomic_write_json(summary_path, summary)
    print(f"[eval] accuracy {summary['accuracy']:.3f} over {summary['num_episodes']} episodes ({model})", flush=True)
    for cat, entry in summary["per_category"].items():
        print(f"[eval]   {cat:<52} {entry['accuracy']:.3f}  ({entry['episodes']})", flush=True)
    manifest.write_manifest(
        cfg,
        "eval",
        inputs=[tasks],
        outputs=[results_path, summary_path],
        timer=timer,
        extra={"accuracy": summary["accuracy"], "model": str(model)},
    )
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF model dir or training checkpoint step_N/ (default: this run's)")
    parser.add_argument("--tasks", help="JSONL of dataset rows (default: this run's prepared validation file)")
    parser.add_argument("--config", default="tiny_cpu", help="recipe name or YAML path")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. policy.generation.temperature=0.6")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"eval.model={args.model}")
    if args.tasks:
        overrides.append(f"eval.tasks={args.tasks}")
    out = run(load_config(args.config, overrides))
    print(out / "summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
