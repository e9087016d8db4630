"""Stage `sft`: warm-start the policy on expert trajectories before GRPO.

Where no trained model is given (the tiny default starts from random weights), GRPO would never see a reward.
This stage plays every training row once with an *expert* in place of the model: the expert's turns are the
row's ground-truth tool calls followed by a short final answer (`env_sim.agent.expert_turns`), executed against
the environment like any rollout, so tool outputs are real. The trajectories go through the same token
bookkeeping as GRPO rollouts (`trainer.rollout.collect_rollouts`), so the warm-started model sees exactly
the format it will be trained on.

Training reuses the GRPO policy workers (Megatron-core model, AdamW, scheduler, checkpoints): with advantage 1
and the on-policy ratio (a batch given without previous log-probs uses the current ones), the clipped
policy-gradient loss has exactly the gradient of the token-level negative log-likelihood, so no second training
loop exists. The reported `sft:nll` is the batch's NLL before its update (from the same forward pass).

Artifacts in `<run.root>/sft/`: checkpoints/step_N (resumed from after a requeue), metrics.jsonl, hf_model/
(what `train` starts from), manifest.json.
"""

from __future__ import annotations

import functools
import json
import math
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from infra.config import run_root, with_values

if TYPE_CHECKING:
    from trainer.interfaces import Policy


def sft_config(cfg: DictConfig) -> DictConfig:
    """The run config with the policy optimizer set from `sft.*` (lr, min_lr, batch sizes)."""
    s = cfg.sft
    return with_values(
        cfg,
        {
            "policy": {
                "train_global_batch_size": int(s.train_global_batch_size),
                "train_micro_batch_size": int(s.train_micro_batch_size),
                "megatron_cfg": {
                    "optimizer": {"lr": float(s.lr), "min_lr": float(s.min_lr)},
                    "scheduler": {"lr_warmup_iters": int(s.lr_warmup_iters)},
                },
            }
        },
    )


@dataclass
class SftPlan:
    """Which optimizer steps the warm start takes: `short_epochs` short-context epochs first, then `full_epochs`
    with the policy's real prompt (at most `max_steps` in all). The copy check may add short epochs on the way.

    Without the ~300-token system prompt a trajectory is ~4x shorter, so short-context epochs cost a fraction of
    full ones; what a model from scratch learns slowest, copying IDs, dates and names from the request into call
    arguments, does not need the tool list. The full epochs that follow teach the policy's real prompt."""

    steps_per_epoch: int
    short_epochs: int
    full_epochs: int
    max_steps: int | None = None

    @classmethod
    def from_config(cls, cfg: DictConfig, num_rows: int) -> SftPlan:
        return cls(
            math.ceil(num_rows / int(cfg.sft.train_global_batch_size)),
            int(cfg.sft.short_context_epochs),
            int(cfg.sft.num_epochs),
            int(cfg.sft.max_num_steps) if cfg.sft.max_num_steps else None,
        )

    @property
    def short_steps(self) -> int:
        return self.steps_per_epoch * self.short_epochs

    @property
    def total_steps(self) -> int:
        steps = self.steps_per_epoch * (self.short_epochs + self.full_epochs)
        return min(steps, self.max_steps) if self.max_steps else steps

    def is_short(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) belongs to the short-context epochs."""
        return step <= self.short_steps


class CopyCheck:
    """`sft.copy_check`: after the planned short-context epochs, is the model copying values from the request?

    Measured as the mean probability of sampling a trajectory exactly (temperature 1) over a seeded sample of
    short-context training trajectories: a model that invents IDs and dates instead of copying them scores near
    the share of question tasks, however well it knows the tool names. Below `min_exact_prob`, another
    short-context epoch follows (at most `max_extra_epochs`) and the LR decay stretches by that epoch. Seeds differ
    here by up to ~3 epochs (docs/demo_tuning.md), so a fixed count either wastes GRPO's headroom or leaves a seed
    without copying. Training rows only: the validation rows stay unseen until GRPO's validation."""

    def __init__(self, check_cfg: Mapping[str, Any], short_rollouts: Sequence, seed: int):
        import torch

        from trainer.batch import rollouts_to_batch

        self.min_exact_prob = float(check_cfg["min_exact_prob"])
        self.max_extra_epochs = int(check_cfg["max_extra_epochs"])
        count = min(int(check_cfg["rows"]), len(short_rollouts))
        picked = sorted(random.Random(f"{seed}:sft:copy_check").sample(range(len(short_rollouts)), count))
        chosen = [short_rollouts[i] for i in picked]
        self.batch = rollouts_to_batch(chosen, torch.ones(len(chosen)))

    def exact_prob(self, policy: Policy) -> float:
        from trainer.grpo.selection import sequence_probabilities

        return float(sequence_probabilities(policy.get_logprobs(self.batch), self.batch["loss_mask"]).mean())


class EpochProgress:
    """What the warm start shows while it runs: a progress bar over its steps on a terminal (none in a Slurm log,
    where it would be one line rewritten by carriage returns) and one line per epoch, which also goes into that
    epoch's last metrics row (`sft:epoch`, `sft:epoch_nll_mean`, `sft:epoch_seconds`) for `make demo` to echo.

    A job resumed mid-epoch takes the epoch's earlier NLLs from metrics.jsonl; its seconds are this job's."""

    def __init__(self, plan: SftPlan, step: int, history: Sequence[Mapping[str, Any]]):
        from tqdm import tqdm

        self.plan = plan
        first = (step // plan.steps_per_epoch) * plan.steps_per_epoch + 1  # the current epoch's first step
        self.nlls = [float(row["sft:nll"]) for row in history if first <= int(row["step"]) <= step]
        self.started = time.perf_counter()
        self.bar = tqdm(
            total=plan.total_steps,
            initial=step,
            desc="[sft]",
            unit="step",
            file=sys.stdout,
            disable=not sys.stdout.isatty(),
            dynamic_ncols=True,
        )

    def step_done(self, step: int, nll: float, copy_result: str = "") -> dict[str, Any]:
        """Advance the bar; at the end of an epoch print its line and return the keys for its metrics row."""
        self.nlls.append(nll)
        self.bar.total = self.plan.total_steps  # the copy check may have added an epoch
        self.bar.set_postfix(nll=f"{nll:.3f}", refresh=False)
        self.bar.update(1)
        per_epoch = self.plan.steps_per_epoch
        if step % per_epoch and step != self.plan.total_steps:
            return {}
        epoch, seconds = math.ceil(step / per_epoch), time.perf_counter() - self.started
        mean = sum(self.nlls) / len(self.nlls)
        kind = "short context" if self.plan.is_short(step) else "full prompt"
        line = (
            f"[sft] epoch {epoch}/{math.ceil(self.plan.total_steps / per_epoch)} ({kind}): "
            f"steps {step - len(self.nlls) + 1}-{step}, mean nll {mean:.4f}"
            + (f", {copy_result}" if copy_result else "")
            + f", {seconds:.1f}s"
        )
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()
        self.nlls, self.started = [], time.perf_counter()
        return {"sft:epoch": epoch, "sft:epoch_nll_mean": mean, "sft:epoch_seconds": seconds}

    def close(self) -> None:
        self.bar.close()


def batch_order(num_rows: int, gbs: int, seed: int, step: int) -> list[int]:
    """Row indices of optimizer step `step` (1-based): a fresh seeded shuffle per epoch."""
    per_epoch = math.ceil(num_rows / gbs)
    epoch, index = divmod(step - 1, per_epoch)
    order = list(range(num_rows))
    random.Random(f"{seed}:sft:{epoch}").shuffle(order)
    return order[index * gbs : (index + 1) * gbs]


def run(cfg: DictConfig) -> Path:
    import torch
    from transformers import AutoTokenizer

    from infra import manifest, signals
    from infra.io import read_jsonl
    from trainer.batch import rollouts_to_batch
    from trainer.checkpoint import CheckpointManager
    from trainer.distributed import init_ray, ray_address
    from trainer.expert import expert_rollouts
    from trainer.metrics import MetricsLogger
    from trainer.models.hub import resolve_model
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import PolicyGroup
    from trainer.ray_placement import reserve_for

    timer = manifest.StageTimer()
    root = run_root(cfg)
    out_dir = root / "sft"
    train_path = root / "prepare" / "train_prepare.jsonl"
    if not train_path.exists():
        raise FileNotFoundError(f"{train_path} is missing: run the prepare stage first (make submit-prepare)")
    rows = read_jsonl(train_path)
    model_dir = resolve_model(cfg.policy.model_name, root / "models", tiny_cfg=cfg.policy.tiny, seed=int(cfg.run.seed))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    trajectories = expert_rollouts(rows, tokenizer, cfg)
    plan = SftPlan.from_config(cfg, len(trajectories))
    planned_short_epochs = plan.short_epochs  # the copy check's extra epochs count from here
    short = expert_rollouts(rows, tokenizer, cfg, short_context=True) if plan.short_epochs else None
    gbs, seed = int(cfg.sft.train_global_batch_size), int(cfg.run.seed)
    copy_check = CopyCheck(cfg.sft.copy_check, short, seed) if short and cfg.sft.copy_check else None
    timer.phase("expert_trajectories")
    print(
        f"[sft] {len(trajectories)} expert trajectories, "
        f"{sum(r.num_generated_tokens for r in trajectories)} assistant tokens"
        + (f"; {plan.short_epochs} short-context epoch(s) first" if short else "")
        + (
            f" (more while the copy check's exact-trajectory probability is under "
            f"{copy_check.min_exact_prob}, at most {copy_check.max_extra_epochs})"
            if copy_check
            else ""
        ),
        flush=True,
    )

    scfg = sft_config(cfg)
    init_ray(address=ray_address(cfg))
    placement = reserve_for(scfg)  # GPUs: each rank on the GPU the plan gives it
    policy = PolicyGroup(
        scfg,
        functools.partial(build_megatron_model, str(model_dir)),
        export_hf_state_dict,
        plan.total_steps,
        placement=placement,
    )
    checkpoints = CheckpointManager(out_dir / "checkpoints", metric_name=None, keep_top_k=1)
    step = 0
    latest = checkpoints.latest()
    if latest is not None:
        policy.load(latest / "policy")  # the scheduler state carries any stretched LR decay
        info = CheckpointManager.training_info(latest)
        step, plan.short_epochs = int(info["current_step"]), int(info.get("short_context_epochs", plan.short_epochs))
        print(f"[sft] resumed from {latest} at step {step}", flush=True)
    metrics = MetricsLogger(out_dir, None, False, resume_step=step, echo=False)  # a bar and a line per epoch
    timer.phase("start_workers")
    progress = EpochProgress(plan, step, metrics.read())

    def save(at: int) -> None:
        checkpoints.save(
            at,
            {"stage": "sft", "short_context_epochs": plan.short_epochs},
            OmegaConf.to_yaml(scfg),
            lambda d: policy.save(d / "policy"),
        )

    save_period = max(1, int(cfg.sft.save_period or plan.total_steps))
    while step < plan.total_steps:
        if signals.preemption_requested():
            save(step)
            progress.close()
            print(f"[sft] preemption requested: saved step {step}, stopping", flush=True)
            return out_dir
        step += 1
        t0 = time.perf_counter()
        source = trajectories
        if plan.is_short(step):
            if short is None:
                raise RuntimeError(
                    f"[sft] step {step} is a short-context step, but sft.short_context_epochs=0 built no "
                    "short-context trajectories (resuming a checkpoint of a run with short-context epochs?)"
                )
            source = short
        chosen = [source[i] for i in batch_order(len(trajectories), gbs, seed, step)]
        batch = rollouts_to_batch(chosen, torch.ones(len(chosen)))
        batch.pop("generation_logprobs")
        result = policy.train(batch)  # no prev_logprobs: on-policy, so the loss gradient is the NLL's
        logged = {
            "sft:nll": -result["logprob_mean"],
            "grad_norm": result["grad_norm"],
            "sft:lr": result["lr"],
            "sft:tokens": float(batch["loss_mask"].sum()),
            "timing/sft/step": time.perf_counter() - t0,
        }
        copy_result = ""
        if copy_check is not None and step == plan.short_steps:
            logged["sft:copy_exact_prob"] = prob = copy_check.exact_prob(policy)
            extra = plan.short_epochs - planned_short_epochs
            if prob < copy_check.min_exact_prob and extra < copy_check.max_extra_epochs:
                plan.short_epochs += 1
                policy.extend_lr_decay(plan.steps_per_epoch)
                copy_result = (
                    f"copy check {prob:.3f} < {copy_check.min_exact_prob}: short-context epoch {plan.short_epochs} "
                    "follows"
                )
            else:
                short_of = (
                    f" < {copy_check.min_exact_prob}, no extra epoch left" if prob < copy_check.min_exact_prob else ""
                )
                copy_result = f"copy check {prob:.3f}{short_of}: the full-prompt epoch(s) follow"
        logged.update(progress.step_done(step, logged["sft:nll"], copy_result))
        metrics.log(step, logged)
        if step % save_period == 0 and step < plan.total_steps:
            save(step)
    progress.close()
    timer.phase("train")
    hf_dir = policy.save_hf_model(
        model_dir, out_dir / "hf_model", "bfloat16" if str(cfg.policy.precision) in ("bfloat16", "bf16") else "float32"
    )
    policy.shutdown()
    if placement is not None:
        placement.release()
    metrics.finish()
    timer.phase("export_hf_model")
    history = metrics.read()
    manifest.write_manifest(
        cfg,
        "sft",
        inputs=[train_path],
        outputs=[hf_dir, out_dir / "metrics.jsonl"],
        timer=timer,
        extra={
            "steps": step,
            "initial_model": str(model_dir),
            "short_context_epochs": plan.short_epochs,
            "first_nll": history[0].get("sft:nll") if history else None,
            "final_nll": history[-1].get("sft:nll") if history else None,
        },
    )
    return out_dir


def describe(out_dir: Path) -> dict[str, Any]:
    """Summary for the demo table: steps and NLL before/after."""
    data = json.loads((out_dir / "manifest.json").read_text())
    return data.get("extra", data)
