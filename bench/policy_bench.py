"""`make bench-policy`: one GRPO optimizer step of the tiny CPU policy, shared prompts packed or not.

The batch has the demo's shape: `--groups` prompts (env_sim tasks in the tiny_cpu prompt format) x `--per-group`
rollouts each; every rollout is the task's expert trajectory with its trained tokens resampled at random, so a
group's rollouts share the prompt and differ after it, with the demo's lengths (~300 prompt tokens, ~50 more).
The same Megatron-core policy (tiny_cpu sizes, fp32) takes the step with `policy.pack_shared_prefixes` on and
off, alternately (`--repeats` each, after one warm-up of each), in one process; the figure is the median.

Writes bench/results/policy.json and adds rows to the table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.env_bench import machine_name, publish  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "policy.json"


def grpo_batch(cfg, tokenizer, groups: int, per_group: int, seed: int):
    """Rollout batch: each group = one task's expert trajectory `per_group` times, trained tokens resampled."""
    import torch

    from env_sim.workplace_assistant.tasks.generator import generate_rows
    from trainer.batch import rollouts_to_batch
    from trainer.expert import expert_rollouts

    rows = generate_rows(groups, seed, difficulties=list(cfg.data.local.difficulties or []) or None)
    experts = expert_rollouts(rows, tokenizer, cfg)
    g = torch.Generator().manual_seed(seed)
    batch = rollouts_to_batch(
        [r for r in experts for _ in range(per_group)], torch.randn(groups * per_group, generator=g)
    )
    trained = batch["loss_mask"] != 0
    noise = torch.randint(1, len(tokenizer), batch["input_ids"].shape, generator=g)
    keep = torch.arange(len(batch["input_ids"])) % per_group == 0  # one rollout a group stays the expert's
    batch["input_ids"] = torch.where(trained & ~keep[:, None], noise, batch["input_ids"])
    batch.pop("generation_logprobs", None)
    return batch


def run(config: str, groups: int, per_group: int, repeats: int, overrides: list[str]) -> dict:
    import torch
    from transformers import AutoTokenizer

    from infra.config import load_config
    from trainer.models.hub import resolve_model
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import InProcessPolicy

    cfg = load_config(config, [f"policy.train_global_batch_size={groups * per_group}", *overrides])
    model_dir = resolve_model(
        cfg.policy.model_name, Path(tempfile.mkdtemp(prefix="policy_bench_")), tiny_cfg=cfg.policy.tiny, seed=0
    )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    batch = grpo_batch(cfg, tokenizer, groups, per_group, seed=7)
    policy = InProcessPolicy(
        cfg,
        functools.partial(build_megatron_model, str(model_dir)),
        export_hf_state_dict,
        total_steps=10 * repeats + 10,
    )
    worker = policy.worker
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for attempt in range(repeats + 1):
        for packed in (False, True):
            worker.pack_prefixes = packed
            started = time.perf_counter()
            worker.train(dict(batch))
            if attempt:  # the first of each is the warm-up
                seconds[packed].append(time.perf_counter() - started)
    rows = slice(0, len(batch["input_ids"]))
    micro = list(worker._train_microbatches(rows, int(cfg.policy.train_micro_batch_size), batch))
    lengths = batch["input_lengths"]
    return {
        "date": dt.date.today().isoformat(),
        "machine": machine_name(),
        "config": config,
        "overrides": overrides,
        "groups": groups,
        "per_group": per_group,
        "repeats": repeats,
        "torch_threads": torch.get_num_threads(),
        "tokens_unpacked": int(lengths.sum()),
        "tokens_packed": sum(p.packed_tokens for _, _, p in micro),
        "mean_prompt_tokens": float((batch["loss_mask"] != 0).float().argmax(1).float().mean()),
        "mean_row_tokens": float(lengths.float().mean()),
        "step_seconds_unpacked": statistics.median(seconds[False]),
        "step_seconds_packed": statistics.median(seconds[True]),
        "speedup": statistics.median(seconds[False]) / statistics.median(seconds[True]),
        "all_seconds": {"unpacked": seconds[False], "packed": seconds[True]},
    }


def doc_rows(result: dict) -> tuple[str, list[tuple[str, str]]]:
    config = (
        f"bench.policy_bench, {result['config']} policy (fp32, {result['torch_threads']} threads), "
        f"{result['groups']} prompts x {result['per_group']} rollouts, ~{result['mean_row_tokens']:.0f} tokens "
        f"a rollout of which ~{result['mean_prompt_tokens']:.0f} prompt, median of {result['repeats']}"
    )
    return config, [
        (
            "policy train step, unpacked rows",
            f"{result['step_seconds_unpacked']:.2f} s ({result['tokens_unpacked']:,} tokens)",
        ),
        (
            "policy train step, shared prompts packed",
            f"{result['step_seconds_packed']:.2f} s ({result['tokens_packed']:,} tokens)",
        ),
        ("packing speed-up (same gradients)", f"{result['speedup']:.2f}x"),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny_cpu")
    p.add_argument("--groups", type=int, default=8, help="prompts whose groups have mixed rewards (trained)")
    p.add_argument("--per-group", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-doc", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    result = run(args.config, args.groups, args.per_group, args.repeats, args.overrides)
    publish(result, args.output, None if args.no_doc else doc_rows(result), hidden_keys=("all_seconds",))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
