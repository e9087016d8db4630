"""`make bench-grpo-gpu` (one GPU, with the GPU bundle on PYTHONPATH): the real GRPO trainer on one GPU.

Ray, the Megatron-core policy (bf16, SDPA), one vLLM engine colocated on the same GPU (CUDA graphs, sleep mode
between generations, the policy's Adam state on the host while it generates), env_sim rollouts, refit by CUDA IPC
every step: `trainer.components.build_components` and `GRPOTrainer.fit`, as the train stage runs them. The model
is Qwen3-1.7B-shaped (hidden 2048, 28 layers, GQA 16/8, FFN 6144, vocab 151,936, tied embeddings) with random
weights and a tokenizer the project trains; random weights write no tool call, so an episode is one turn of
`--max-new-tokens` and every reward is 0 (speed only: `--tiny` runs the correctness smoke instead). The first
step is a warm-up; the figures are medians over the others:

  E2E samples/s            rollouts / step time (the seeds' "E2E (Samples/sec)")
  generation tokens/s      generated tokens / generation phase (rollouts included)
  training tokens/s, MFU   tokens of the trained rows / policy_training phase; MFU counts 3 x forward FLOPs
                           (matmuls; causal attention per row; the output layer only where the loss is, as the
                           policy computes it) over the card's dense bf16 peak
  refit seconds            policy -> engine (CUDA IPC), and the engine's wake-up before it
  GPU idle share           1 - mean NVML utilization over the measured steps (`nvidia-smi -lms 100`)

`--compare-seeding`: the measured steps alternate `policy.generation.per_request_seeds` (even steps as configured,
odd ones the other way), and `by_seeding` gives each mode's generation speed: vLLM samples seeded requests one
generator at a time, unseeded ones in one batched draw.

`--tiny`: the correctness smoke: the tiny model warm-started by the sft stage on this GPU, then GRPO steps with
validation at start and end (val:accuracy kept or raised). Writes bench/results/grpo_gpu[_tiny].json (and $OUT
when set) and rows in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra.io import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
QWEN3_1P7B = {
    "hidden_size": 2048,
    "num_layers": 28,
    "num_attention_heads": 16,
    "num_kv_heads": 8,
    "head_dim": 128,
    "intermediate_size": 6144,
    "vocab_size": 151936,
    "max_position_embeddings": 8192,
}


def gpu_overrides(root: Path) -> list[str]:
    """One GPU, colocated, bf16: the recipe values a 1-GPU run needs on top of tiny_cpu."""
    return [
        f"run.root={root}",
        "cluster.gpus_per_node=1",
        "cluster.num_nodes=1",
        "policy.precision=bfloat16",
        "policy.generation.vllm_cfg.precision=bfloat16",
        "policy.generation.vllm_cfg.block_size=null",
        "policy.generation.vllm_cfg.cpu_reserved_cores=null",
        "policy.generation.vllm_cfg.enable_sleep_mode=true",
        "policy.offload_optimizer_for_generation=true",
        "policy.generation.refit_transport=cuda_ipc",
        "logger.wandb_enabled=false",
    ]


def speed_overrides(args: argparse.Namespace) -> list[str]:
    rollouts = args.prompts * args.generations
    return [
        *(f"policy.tiny.{key}={value}" for key, value in QWEN3_1P7B.items()),
        "policy.max_total_sequence_length=8192",  # ~3.8k-token prompts (27 tools) + 512 new
        "policy.generation.vllm_cfg.enforce_eager=false",
        f"policy.generation.vllm_cfg.gpu_memory_utilization={args.gpu_memory_utilization}",
        f"policy.generation.vllm_cfg.max_num_seqs={max(256, rollouts)}",
        f"policy.generation.max_new_tokens={args.max_new_tokens}",
        "env.compact_tools=false",
        "env.tool_scope=all",
        f"grpo.num_prompts_per_step={args.prompts}",
        f"grpo.num_generations_per_prompt={args.generations}",
        "grpo.prompt_selection.pool_factor=1",
        "grpo.skip_zero_advantage_rollouts=false",  # every reward is 0: train on all rows (speed is the point)
        f"grpo.max_num_steps={args.steps}",
        "grpo.max_num_epochs=100",
        "grpo.val_at_start=false",
        "grpo.val_at_end=false",
        "grpo.val_period=0",
        f"policy.train_global_batch_size={rollouts}",
        f"policy.train_micro_batch_size={args.micro_batch}",
        "policy.pack_shared_prefixes=false",  # every row's tokens computed: MFU over what the GPU really does
        "checkpointing.enabled=false",
    ]


def tiny_overrides(args: argparse.Namespace) -> list[str]:
    return [
        "sft.enabled=true",
        f"grpo.max_num_steps={args.steps}",
        "grpo.val_at_start=true",
        "grpo.val_at_end=true",
        "grpo.val_period=0",
        "policy.generation.vllm_cfg.gpu_memory_utilization=0.3",
        "policy.generation.vllm_cfg.enforce_eager=true",
        "checkpointing.enabled=false",
    ]


class UtilizationSampler:
    """`nvidia-smi` printing a timestamp and the GPU's utilization every 100 ms, while a with-block runs."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.times: list[float] = []  # epoch seconds of each sample
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> UtilizationSampler:
        try:
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=timestamp,utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                    "-i",
                    "0",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        except FileNotFoundError:  # no NVIDIA driver tools (a CPU dry run): no idle share
            self._proc = None
        return self

    def __exit__(self, *exc) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        out, _ = self._proc.communicate(timeout=10)
        for when, value in parse_utilization(out):
            self.times.append(when)
            self.samples.append(value)

    @property
    def idle_share(self) -> float | None:
        return 1 - statistics.fmean(self.samples) / 100 if self.samples else None


def parse_utilization(text: str) -> list[tuple[float, float]]:
    """(epoch seconds, percent) from `nvidia-smi --query-gpu=timestamp,utilization.gpu` CSV lines (local time,
    as the driver prints it); lines that do not parse (a cut last line) are skipped."""
    out = []
    for line in text.splitlines():
        stamp, _, value = line.rpartition(",")
        try:
            when = dt.datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            out.append((when, float(value)))
        except ValueError:
            continue
    return out


def idle_by_phase(
    spans: list[tuple[str, float, float]], times: list[float], samples: list[float]
) -> dict[str, dict[str, float]]:
    """Per phase: wall seconds, mean utilization of the samples inside its spans, and the GPU-idle seconds that
    implies (seconds x (1 - utilization)); time between a step's phases is its own entry, `(between phases)`."""
    if not spans or not samples:
        return {}
    ordered = sorted(spans, key=lambda s: s[1])
    gaps = [("(between phases)", a[2], b[1]) for a, b in zip(ordered, ordered[1:]) if b[1] - a[2] > 0.05]
    result: dict[str, dict[str, float]] = {}
    for phase, start, end in ordered + gaps:
        inside = [u for t, u in zip(times, samples) if start <= t < end]
        entry = result.setdefault(phase, {"seconds": 0.0, "busy_sum": 0.0, "samples": 0})
        entry["seconds"] += end - start
        entry["busy_sum"] += sum(inside)
        entry["samples"] += len(inside)
    table = {}
    for phase, e in sorted(result.items(), key=lambda kv: -kv[1]["seconds"]):
        util = e["busy_sum"] / e["samples"] / 100 if e["samples"] else None
        table[phase] = {
            "seconds": round(e["seconds"], 3),
            "utilization": None if util is None else round(util, 3),
            "idle_seconds": None if util is None else round(e["seconds"] * (1 - util), 3),
        }
    return table


def train_flops(lengths: list[int], completions: list[int], shape: dict) -> float:
    """3 x forward FLOPs of the trained rows: projections per token, causal attention per row, the output layer
    only at the rows' completion tokens (`policy.logits_only_where_loss`)."""
    h, layers, f = shape["hidden_size"], shape["num_layers"], shape["intermediate_size"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_kv_heads"] * shape["head_dim"]
    body = layers * (h * q + 2 * h * kv + q * h + 3 * h * f)
    forward = 0.0
    for length, completion in zip(lengths, completions):
        forward += 2 * body * length + 2 * h * shape["vocab_size"] * completion
        forward += layers * 2 * 2 * q * length * length / 2  # QK^T and PV over half the keys on average
    return 3 * forward


def run(args: argparse.Namespace) -> dict:
    import torch

    from bench.gpu_bench import peak_bf16_flops
    from infra.config import load_config
    from infra.io import read_jsonl
    from pipeline import data, prepare, sft
    from trainer.components import build_components, initial_model_dir, refit_dtype
    from trainer.distributed import init_ray
    from trainer.grpo.loop import GRPOTrainer, total_training_steps

    root = Path(tempfile.mkdtemp(prefix="grpo_gpu_bench_"))
    overrides = gpu_overrides(root) + (tiny_overrides(args) if args.tiny else speed_overrides(args)) + args.overrides
    cfg = load_config("tiny_cpu", overrides)
    data.run(cfg)
    prepare.run(cfg)
    phases: dict[str, float] = {}
    started = time.perf_counter()
    init_ray()
    if args.tiny:
        sft.run(cfg)
        phases["sft_seconds"] = time.perf_counter() - started
    train_rows, val_rows = (read_jsonl(root / "prepare" / f"{s}_prepare.jsonl") for s in ("train", "validation"))
    t = time.perf_counter()
    model_dir = initial_model_dir(cfg)
    phases["model_build_seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    components = build_components(cfg, model_dir, total_training_steps(cfg, len(train_rows)))
    phases["startup_seconds"] = time.perf_counter() - t
    engine = components.generation.engine_info[0] if hasattr(components.generation, "engine_info") else {}

    trained: list[tuple[list[int], list[int]]] = []  # (row lengths, completion tokens) of each policy.train call
    train = components.policy.train

    def observed_train(batch):
        trained.append((batch["input_lengths"].tolist(), batch["loss_mask"].sum(dim=1).tolist()))
        return train(batch)

    components.policy.train = observed_train  # type: ignore[method-assign]
    trainer = GRPOTrainer(cfg, train_rows, val_rows if args.tiny else [], components, refit_dtype=refit_dtype(cfg))
    step_times: list[float] = []
    original_step = trainer.train_step
    sampler = UtilizationSampler()

    spans: list[tuple[str, float, float]] = []  # the measured steps' phases

    seeded_by_step: dict[int, bool] = {}
    if args.compare_seeding:
        trainer.rollout_fn = seeding_alternated(trainer.rollout_fn, cfg, lambda: seeded_by_step[max(seeded_by_step)])

    def timed_step(step: int):
        if step == 2 and not args.tiny:
            sampler.__enter__()  # from the end of the warm-up step to the end of the last step
        seeded_by_step[step] = bool(cfg.policy.generation.per_request_seeds) ^ (args.compare_seeding and step % 2 == 1)
        t0 = time.perf_counter()
        out = original_step(step)
        step_times.append(time.perf_counter() - t0)
        if step >= 2:
            spans.extend(trainer.last_phase_spans)
        return out

    trainer.train_step = timed_step  # type: ignore[method-assign]
    trainer.fit()
    if not args.tiny:
        sampler.__exit__(None, None, None)
    rows = [r for r in trainer.metrics.read() if "performance:samples_per_sec" in r]
    vals = [r for r in trainer.metrics.read() if "val:accuracy" in r]
    components.shutdown()
    measured = list(range(1, len(rows))) or [0]
    median = lambda key: statistics.median(rows[i][key] for i in measured)  # noqa: E731
    shape = QWEN3_1P7B if not args.tiny else dict(cfg.policy.tiny)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_bf16_flops(device)
    train_rates = []
    for i in measured:
        lengths, completions = trained[i]
        seconds = rows[i]["timing/train/policy_training"]
        flops = train_flops(lengths, completions, shape)
        train_rates.append((sum(lengths) / seconds, flops / seconds / peak if peak else None))
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{device}, {os.cpu_count()} CPUs ({platform.node()})",
        "mode": "tiny correctness" if args.tiny else "Qwen3-1.7B shape, random weights",
        "rollouts_per_step": int(cfg.grpo.num_prompts_per_step) * int(cfg.grpo.num_generations_per_prompt),
        "max_new_tokens": int(cfg.policy.generation.max_new_tokens),
        "micro_batch": int(cfg.policy.train_micro_batch_size),
        "steps_measured": len(measured),
        **{k: round(v, 2) for k, v in phases.items()},
        "engine_start_seconds": round(engine.get("start_seconds", float("nan")), 1),
        "warmup_step_seconds": round(rows[0]["timing/train/total_step_time"], 2),
        "step_seconds": round(median("timing/train/total_step_time"), 2),
        "samples_per_sec": round(median("performance:samples_per_sec"), 2),
        "generation_tokens_per_sec": round(median("performance:generation_tokens_per_sec"), 1),
        "training_tokens_per_sec": round(statistics.median(r for r, _ in train_rates), 1),
        "training_mfu": round(statistics.median(m for _, m in train_rates), 4) if peak else None,
        "refit_seconds": round(median("refit:seconds"), 3),
        "engine_wake_seconds": round(median("timing/train/prepare_for_generation/engine_wake"), 3),
        "gpu_idle_share": None if sampler.idle_share is None else round(sampler.idle_share, 3),
        "gpu_idle_by_phase": idle_by_phase(spans, sampler.times, sampler.samples),
        "utilization_samples": len(sampler.samples),
        "mean_gen_tokens_per_sample": round(median("train:mean_gen_tokens_per_sample"), 1),
        "mean_total_tokens_per_sample": round(median("train:mean_total_tokens_per_sample"), 1),
        "phase_seconds": {
            k.split("timing/train/")[1]: round(statistics.median(rows[i][k] for i in measured), 3)
            for k in rows[measured[0]]
            if k.startswith("timing/train/")
        },
        "train_reward_mean": [round(r["train:reward_mean"], 3) for r in rows],
        "val_accuracy": [(r["step"], r["val:accuracy"]) for r in vals],
        "overrides": overrides[1:],
    }
    if args.compare_seeding:
        result["by_seeding"] = {}
        for label, flag in (("per_request_seeds", True), ("unseeded", False)):
            picked = [i for i in measured if seeded_by_step[i + 1] is flag]
            result["by_seeding"][label] = {
                "steps": [i + 1 for i in picked],
                "generation_tokens_per_sec": round(
                    statistics.median(rows[i]["performance:generation_tokens_per_sec"] for i in picked), 1
                ),
                "generation_seconds": round(statistics.median(rows[i]["timing/train/generation"] for i in picked), 3),
            }
    return result


def seeding_alternated(rollout_fn, cfg, seeded_now):
    """`rollout_fn` with `policy.generation.per_request_seeds` as `seeded_now()` says, for a side-by-side of
    vLLM's seeded sampling (a generator per request, sampled row by row) and its batched sampling in one run."""
    from omegaconf import OmegaConf

    variants = {
        flag: OmegaConf.merge(cfg, {"policy": {"generation": {"per_request_seeds": flag}}}) for flag in (True, False)
    }

    def rollouts(rows, generation, tokenizer, _cfg, seed):
        return rollout_fn(rows, generation, tokenizer, variants[seeded_now()], seed)

    return rollouts


def doc_rows(result: dict) -> list[tuple[str, str]]:
    if result["mode"].startswith("tiny"):
        accuracies = [a for _, a in result["val_accuracy"]]
        return [
            ("GRPO on the GPU, tiny warm-started model: val:accuracy start -> end", " -> ".join(map(str, accuracies)))
        ]
    rows = [
        ("GRPO E2E samples/s", f"{result['samples_per_sec']} samples/s ({result['step_seconds']} s/step)"),
        ("GRPO generation tokens/s (vLLM, in the loop)", f"{result['generation_tokens_per_sec']:,.0f} tokens/s"),
        ("GRPO training tokens/s (in the loop)", f"{result['training_tokens_per_sec']:,.0f} tokens/s"),
        ("GRPO refit (CUDA IPC) + engine wake", f"{result['refit_seconds']} s + {result['engine_wake_seconds']} s"),
    ]
    if result["training_mfu"] is not None:
        rows.append(("GRPO training MFU (in the loop)", f"{100 * result['training_mfu']:.1f}%"))
    if result["gpu_idle_share"] is not None:
        rows.append(("GPU idle share of a step (NVML)", f"{100 * result['gpu_idle_share']:.1f}%"))
    for label, entry in result.get("by_seeding", {}).items():
        what = "a seed per request" if label == "per_request_seeds" else "unseeded (batched sampling)"
        rows.append(
            (
                f"GRPO generation tokens/s, {what}, steps {entry['steps']}",
                f"{entry['generation_tokens_per_sec']:,.0f} tokens/s ({entry['generation_seconds']} s)",
            )
        )
    return rows


def append_doc_rows(result: dict, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    from bench.env_bench import append_table_rows

    micro = result.get("micro_batch") or next(
        (o.split("=")[1] for o in result["overrides"] if o.startswith("policy.train_micro_batch_size=")), "?"
    )
    config = (
        f"bench.grpo_gpu_bench, {result['mode']}, {result['rollouts_per_step']} rollouts/step of "
        f"~{result['mean_total_tokens_per_sample']:,.0f} tokens ({result['max_new_tokens']} new), micro-batch {micro}, "
        f"colocated, median of {result['steps_measured']} steps after warm-up"
    )
    offload = [o.split("=")[1] for o in result["overrides"] if o.startswith("policy.offload_optimizer_for_generation=")]
    if offload and not result["mode"].startswith("tiny"):
        config += f", optimizer offload {'on' if offload[-1] == 'true' else 'off'}"
        config += f", engine start {result['engine_start_seconds']} s"
    append_table_rows(path, result["date"][:10], result["machine"], config, doc_rows(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="the correctness smoke (warm-started tiny model)")
    p.add_argument("--steps", type=int, default=4, help="GRPO steps (the first is the warm-up)")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument(
        "--compare-seeding",
        action="store_true",
        help="measured steps alternate per-request seeds on (even steps) and off (odd): generation speed of each",
    )
    p.add_argument("--no-doc", action="store_true", help="do not append rows to docs/benchmarks.md")
    p.add_argument("--from-json", type=Path, help="only add the doc rows of an earlier result file")
    p.add_argument("overrides", nargs="*", help="config dotlist overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        append_doc_rows(json.loads(args.from_json.read_text()))
        return 0
    result = run(args)
    name = "grpo_gpu_tiny.json" if args.tiny else "grpo_gpu.json"
    for folder in [ROOT / "bench" / "results"] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else []):
        atomic_write_json(folder / name, result)
    if not args.no_doc:
        append_doc_rows(result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
