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
    from infra.io import read_jsonl

    rows = read_jsonl(train_dir / "metrics.jsonl")
    val = [(r["step"], r["val:accuracy"]) for r in rows if "val:accuracy" in r]
    if not val:
        raise ValueError(f"{train_dir}/metrics.jsonl has no val:accuracy rows")
    start = next((acc for step, acc in val if step == 0), None)
    best_step, best = max(val, key=lambda sv: (sv[1], -sv[0]))
    steps = [r for r in rows if "timing/train/total_step_time" in r]
    mean = lambda key: (sum(r.get(key, 0.0) for r in steps) / len(steps)) if steps else None  # noqa: E731
    return {
        "val_at_start": start,
        "best_val": best,
        "best_step": best_step,
        "final_val": val[-1][1],
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
    from infra.io import read_jsonl

    rows = read_jsonl(path)
    nll = [r["sft:nll"] for r in rows if "sft:nll" in r]
    times = [r["timing/sft/step"] for r in rows if "timing/sft/step" in r]
    return {
        "sft_steps": len(rows),
        "sft_first_nll": nll[0] if nll else None,
        "sft_last_nll": nll[-1] if nll else None,
        "sft_step_seconds": sum(times) / len(times) if times else None,
    }


def sft_curve(cfg, eval_every: int, threads: int | None) -> list[dict]:
    """The sft stage's loop in this process (InProcessPolicy, no Ray; the planned epochs only: no copy check, so
    fixed schedules can be compared), with a held-out check every `eval_every`
    steps: mean token NLL of the validation rows' expert trajectories and the mean probability of sampling each
    of them exactly at temperature 1 (a lower bound on val:accuracy at warm start). For tuning `sft.*` and the
    model size without running GRPO."""
    import functools

    import torch
    from transformers import AutoTokenizer

    from infra.config import run_root
    from infra.io import read_jsonl
    from pipeline import data, prepare
    from pipeline.sft import SftPlan, batch_order, sft_config
    from trainer.batch import rollouts_to_batch
    from trainer.expert import expert_rollouts
    from trainer.grpo.selection import sequence_probabilities
    from trainer.models.hub import resolve_model
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import InProcessPolicy

    if threads:
        torch.set_num_threads(threads)
    data.run(cfg)
    prepare.run(cfg)
    root = run_root(cfg)
    rows = read_jsonl(root / "prepare" / "train_prepare.jsonl")
    val_rows = read_jsonl(root / "prepare" / "validation_prepare.jsonl")
    model_dir = resolve_model(cfg.policy.model_name, root / "models", tiny_cfg=cfg.policy.tiny, seed=int(cfg.run.seed))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    train, val = expert_rollouts(rows, tokenizer, cfg), expert_rollouts(val_rows, tokenizer, cfg)
    plan = SftPlan.from_config(cfg, len(train))
    short = expert_rollouts(rows, tokenizer, cfg, short_context=True) if plan.short_epochs else None
    val_batch = rollouts_to_batch(val, torch.ones(len(val)))
    total = plan.total_steps
    policy = InProcessPolicy(
        sft_config(cfg), functools.partial(build_megatron_model, str(model_dir)), export_hf_state_dict, total
    )
    gbs, seed = int(cfg.sft.train_global_batch_size), int(cfg.run.seed)
    curve, started, cpu0 = [], time.perf_counter(), time.process_time()

    short_val_batch = (
        rollouts_to_batch(expert_rollouts(val_rows, tokenizer, cfg, short_context=True), torch.ones(len(val_rows)))
        if short
        else None
    )

    def exact_prob(vb) -> tuple[float, float]:
        lp = policy.get_logprobs(vb) * vb["loss_mask"]
        return float(-lp.sum() / vb["loss_mask"].sum()), float(sequence_probabilities(lp, vb["loss_mask"]).mean())

    def check(step: int) -> None:
        nll, prob = exact_prob(val_batch)
        point = {
            "step": step,
            "val_nll": nll,
            "val_exact_prob": prob,
            "minutes": round((time.perf_counter() - started) / 60, 2),
            "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
            "load": round(load_average(), 1),
        }
        if short_val_batch is not None and plan.is_short(step):
            point["short_val_nll"], point["short_val_exact_prob"] = exact_prob(short_val_batch)
        curve.append(point)
        print(json.dumps(point), flush=True)

    for step in range(1, total + 1):
        source = short if plan.is_short(step) else train
        chosen = [source[i] for i in batch_order(len(train), gbs, seed, step)]
        batch = rollouts_to_batch(chosen, torch.ones(len(chosen)))
        batch.pop("generation_logprobs")
        policy.train(batch)
        if step % eval_every == 0 or step == total:
            check(step)
    if os.environ.get("DEMO_BENCH_ANALYZE"):
        token_report(policy, val, val_batch, tokenizer)
    hf_dir = policy.save_hf_model(model_dir, root / "sft" / "hf_model", "float32")
    return curve, hf_dir


def token_report(policy, rollouts, batch, tokenizer) -> None:
    """Where the held-out NLL sits: tokens that also occur in the task's query (copied values) vs the rest,
    by assistant turn, and the worst tokens."""
    import collections

    lp = policy.get_logprobs(batch)
    classes: dict[str, list[float]] = collections.defaultdict(list)
    worst: collections.Counter = collections.Counter()
    for i, rollout in enumerate(rollouts):
        ids = batch["input_ids"][i].tolist()
        mask = batch["loss_mask"][i].tolist()
        prompt = tokenizer.decode(ids[: rollout.prompt_length])
        query = prompt[prompt.rfind("<|im_start|>user") :]
        turn = 0
        for t in range(1, int(batch["input_lengths"][i])):
            if mask[t] and not mask[t - 1]:
                turn += 1
            if not mask[t]:
                continue
            piece = tokenizer.decode([ids[t]])
            kind = "copied" if piece.strip() and piece.strip() in query and len(piece.strip()) > 1 else "other"
            nll = -float(lp[i, t])
            classes[f"turn{turn}/{kind}"].append(nll)
            worst[piece] += nll
    for key, values in sorted(classes.items()):
        print(
            json.dumps(
                {
                    "class": key,
                    "tokens": len(values),
                    "mean_nll": round(sum(values) / len(values), 3),
                    "sum_nll_per_row": round(sum(values) / len(rollouts), 3),
                }
            ),
            flush=True,
        )
    print(
        json.dumps({"worst_tokens": [(k, round(v / len(rollouts), 3)) for k, v in worst.most_common(25)]}), flush=True
    )


def grpo_inprocess(cfg, model_dir) -> None:
    """The train stage's GRPO loop in this process: InProcessPolicy + the torch generation backend (no Ray, no
    vLLM), for exploring GRPO settings where vLLM is not installed (e.g. on a GPU box). Metrics go to
    <run.root>/train/metrics.jsonl like the real stage's."""
    import functools

    from transformers import AutoTokenizer

    from infra.config import run_root
    from infra.io import read_jsonl
    from trainer.generation.torch_backend import TorchGeneration
    from trainer.grpo.loop import GRPOTrainer, total_training_steps
    from trainer.interfaces import Components
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import InProcessPolicy
    from trainer.rollout import collect_rollouts

    root = run_root(cfg)
    train_rows = read_jsonl(root / "prepare" / "train_prepare.jsonl")
    val_rows = read_jsonl(root / "prepare" / "validation_prepare.jsonl")
    policy = InProcessPolicy(
        cfg,
        functools.partial(build_megatron_model, str(model_dir)),
        export_hf_state_dict,
        total_training_steps(cfg, len(train_rows)),
    )
    generation = TorchGeneration(
        str(model_dir), int(cfg.policy.generation.vllm_cfg.max_model_len), "float32", batch_size=128
    )
    components = Components(
        policy=policy,
        generation=generation,
        rollout_fn=collect_rollouts,
        tokenizer=AutoTokenizer.from_pretrained(str(model_dir)),
    )
    trainer = GRPOTrainer(cfg, train_rows, val_rows, components, refit_dtype="float32")
    trainer.fit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="run name (results/<name>)")
    parser.add_argument("--config", default="tiny_cpu")
    parser.add_argument("--seed", type=int, default=None, help="sets run.seed, grpo.seed and data.local.seed")
    parser.add_argument("--summary-only", action="store_true")
    parser.add_argument(
        "--stages",
        default="data,prepare,sft,train",
        help="comma-separated subset to run, e.g. 'train' to retune GRPO on an existing warm start",
    )
    parser.add_argument(
        "--sft-curve",
        type=int,
        default=0,
        metavar="K",
        help="only the sft loop in-process, with a held-out check every K steps",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads for --sft-curve")
    parser.add_argument(
        "--inprocess-grpo",
        action="store_true",
        help="after --sft-curve, GRPO in-process with the torch generation backend",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    results = Path(os.environ.setdefault("SLURM_GRPO_RESULTS", "/tmp/demo_bench"))
    from infra.config import load_config, run_root

    overrides = [f"run.name={args.name}"] + list(args.overrides)
    if args.seed is not None:
        overrides += [
            f"run.seed={args.seed}",
            f"grpo.seed={args.seed}",
            f"data.local.seed={args.seed}",
            f"data.split_seed={args.seed}",
        ]
    cfg = load_config(args.config, overrides)
    root = run_root(cfg)
    record: dict = {"name": args.name, "overrides": overrides, "load_start": load_average()}
    if args.sft_curve:
        record["sft_curve"], hf_dir = sft_curve(cfg, args.sft_curve, args.threads)
        if args.inprocess_grpo:
            grpo_inprocess(cfg, hf_dir)
            record.update(summarise(root / "train"))
            print(json.dumps({k: v for k, v in record.items() if k != "sft_curve"}), flush=True)
        with open(results / "demo_bench.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return 0
    if not args.summary_only:
        from pipeline import data, prepare, sft, train

        minutes = {}
        wanted = set(args.stages.split(","))
        for stage in (data, prepare, sft, train):
            if (stage is sft and not cfg.sft.enabled) or stage.__name__.split(".")[-1] not in wanted:
                continue
            started = time.perf_counter()
            stage.run(cfg)
            minutes[stage.__name__.split(".")[-1]] = round((time.perf_counter() - started) / 60, 2)
            print(
                f"[demo_bench] {stage.__name__}: {minutes[stage.__name__.split('.')[-1]]} min, "
                f"load {load_average():.1f}",
                flush=True,
            )
        record["minutes"] = minutes
        record["sft_plus_train_minutes"] = round(minutes.get("sft", 0) + minutes.get("train", 0), 2)
    record["load_end"] = load_average()
    record.update(sft_summary(root / "sft"))
    if (root / "train" / "metrics.jsonl").exists():  # not with --stages that leave train out
        record.update(summarise(root / "train"))
    print(json.dumps(record, indent=1), flush=True)
    if not args.summary_only:
        with open(results / "demo_bench.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO_ROOT))
    sys.exit(main())
