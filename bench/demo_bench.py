"""Tuning bench for the tiny CPU demo (issue 6): data -> prepare -> sft -> train in this process, timed.

Runs the stages directly (no Slurm, no submitit), so a tuning run measures what the demo's sft and train jobs
spend, and prints what decides whether the demo "learns": val:accuracy at warm start (GRPO step 0), the best and
the final val:accuracy, and wall minutes per stage, with the machine load at start and end (the CPU is shared).

    PYTHONPATH=. .venv/bin/python bench/demo_bench.py --name try1 [--seed 1] [override ...]

Results go under $SLURM_GRPO_RESULTS (default /tmp/demo_bench)/<name>/; one JSON line per run is appended to
`<results>/demo_bench.jsonl`. `--summary-only` re-reads a finished run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_average() -> float:
    return os.getloadavg()[0]


def summarise(train_dir: Path) -> dict:
    """Warm-start, best and final val:accuracy and per-phase train timings from `train/metrics.jsonl`."""
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [(r["step"], r["val:accuracy"]) for r in rows if "val:accuracy" in r]
    if not val:
        raise ValueError(f"{train_dir}/metrics.jsonl has no val:accuracy rows")
    start = next((acc for step, acc in val if step == 0), None)
    best_step, best = max(val, key=lambda sv: (sv[1], -sv[0]))
    steps = [r for r in rows if "timing/train/total_step_time" in r]
    mean = lambda key: (sum(r.get(key, 0.0) for r in steps) / len(steps)) if steps else None  # noqa: E731
    return {
        "val_at_start": start, "best_val": best, "best_step": best_step, "final_val": val[-1][1],
        "gain": None if start is None else best - start,
        "val_curve": val,
        "train_reward_curve": [round(r.get("train:reward_mean", 0.0), 3) for r in steps],
        "steps": len(steps),
        "step_seconds": mean("timing/train/total_step_time"),
        "generation_seconds": mean("timing/train/generation"),
        "training_seconds": mean("timing/train/policy_training"),
        "logprob_seconds": mean("timing/train/policy_and_reference_logprobs"),
        "refit_seconds": mean("timing/train/prepare_for_generation/transfer_and_update_weights"),
        "validation_seconds": [r.get("timing/validation/total") for r in rows if "timing/validation/total" in r],
    }


def sft_summary(sft_dir: Path) -> dict:
    path = sft_dir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    nll = [r["sft:nll"] for r in rows if "sft:nll" in r]
    times = [r["timing/sft/step"] for r in rows if "timing/sft/step" in r]
    return {"sft_steps": len(rows), "sft_first_nll": nll[0] if nll else None, "sft_last_nll": nll[-1] if nll else None,
            "sft_step_seconds": sum(times) / len(times) if times else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="run name (results/<name>)")
    parser.add_argument("--config", default="tiny_cpu")
    parser.add_argument("--seed", type=int, default=None, help="sets run.seed, grpo.seed and data.local.seed")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    results = Path(os.environ.setdefault("SLURM_GRPO_RESULTS", "/tmp/demo_bench"))
    from pipeline.config import load_config, run_root

    overrides = [f"run.name={args.name}"] + list(args.overrides)
    if args.seed is not None:
        overrides += [f"run.seed={args.seed}", f"grpo.seed={args.seed}", f"data.local.seed={args.seed}",
                      f"data.split_seed={args.seed}"]
    cfg = load_config(args.config, overrides)
    root = run_root(cfg)
    record: dict = {"name": args.name, "overrides": overrides, "load_start": load_average()}
    if not args.summary_only:
        from pipeline import data, prepare, sft, train

        minutes = {}
        for stage in (data, prepare, sft, train):
            if stage is sft and not cfg.sft.enabled:
                continue
            started = time.perf_counter()
            stage.run(cfg)
            minutes[stage.__name__.split(".")[-1]] = round((time.perf_counter() - started) / 60, 2)
            print(f"[demo_bench] {stage.__name__}: {minutes[stage.__name__.split('.')[-1]]} min, "
                  f"load {load_average():.1f}", flush=True)
        record["minutes"] = minutes
        record["sft_plus_train_minutes"] = round(minutes.get("sft", 0) + minutes.get("train", 0), 2)
    record["load_end"] = load_average()
    record.update(sft_summary(root / "sft"))
    record.update(summarise(root / "train"))
    print(json.dumps(record, indent=1), flush=True)
    if not args.summary_only:
        with open(results / "demo_bench.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
