"""The GRPO loop. One step, top to bottom (each phase timed as `timing/train/<phase>`):

    prompts    = loader.next_batch()                            # seeded order, epochs, resumable position
                 (+ keep the most informative of a larger pool: grpo.prompt_selection, trainer.grpo.selection)
    rollouts   = rollout_fn(prompts x n, generation, seed=f(seed, step))   # multi-turn episodes in env_sim
    advantages = leave-one-out baseline per prompt group, / group std
    prev_lp    = policy.get_logprobs(batch)   # only when the batch spans several optimizer steps (+ reference
                                              # log-probs when the KL is on); one step is trained on-policy
    metrics    = policy.train(batch)                            # clipped-ratio loss, AdamW, clip, LR schedule
                 (engines asleep meanwhile where sleep mode is on; the policy's Adam state leaves the GPU after it
                  where policy.offload_optimizer_for_generation is on)
    refit_engines(components)  # the engines take the new weights (trainer.refit: CUDA IPC, or host bytes)
    validate every `val_period` (and at start / end)            # val:accuracy on held-out rows
    checkpoint every `save_period` (and at the end / on preemption)

Resumes from the latest checkpoint (or `checkpointing.resume_from`: best | step_N). Everything random is
derived from (grpo.seed, step), so an interrupted and resumed CPU run logs the same metrics as an uninterrupted
one. `infra.signals.preemption_requested()` (set by the job's USR2/TERM handler) makes it save and return.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from infra import signals
from trainer.batch import informative_rows, rollouts_to_batch
from trainer.checkpoint import CheckpointManager
from trainer.grpo.advantage import compute_advantages, sequence_level_weights
from trainer.grpo.selection import ExpertScorer, select_prompts
from trainer.interfaces import Components, Generation, Policy, RolloutFn
from trainer.metrics import MetricsLogger, accuracy_summary
from trainer.refit import refit_engines

STEP_METRICS = "step_metrics.json"  # in a checkpoint: the metrics row of its step


# ---- data order ---------------------------------------------------------------------------------------------
class PromptLoader:
    """Prompts in a seeded shuffled order per epoch; the position is saved in checkpoints.

    Epoch e uses the permutation of random.Random(f"{seed}:{e}"), so the order never depends on history."""

    def __init__(self, rows: Sequence[dict], batch_size: int, seed: int):
        if not rows:
            raise ValueError("the training set is empty")
        if batch_size < 1:
            raise ValueError(f"grpo.num_prompts_per_step must be >= 1, got {batch_size}")
        self.rows, self.batch_size, self.seed = list(rows), int(batch_size), int(seed)
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def next_batch(self) -> list[dict]:
        """The next `batch_size` prompts (the last batch of an epoch may be smaller)."""
        if self.position >= len(self.rows):
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        picked = self._order[self.position : self.position + self.batch_size]
        self.position += len(picked)
        return [self.rows[i] for i in picked]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_rows": len(self.rows),
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_rows"] != len(self.rows):
            raise ValueError(
                f"checkpoint's data loader saw {state['num_rows']} training rows; this run has "
                f"{len(self.rows)} (different training data?)"
            )
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        self._order = self._permutation(self.epoch)


def step_seed(seed: int, step: int, purpose: str = "train") -> int:
    """A generation seed per (run seed, step, purpose): the same after a resume, different every step."""
    return random.Random(f"{seed}:{purpose}:{step}").randrange(2**31 - 1)


# ---- timing -------------------------------------------------------------------------------------------------
class PhaseTimer:
    """Seconds per phase (summed over repeats), and each phase's wall-clock span (`time.time()`), which a
    benchmark lines up with a device's utilization samples."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.times: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []

    @contextmanager
    def __call__(self, phase: str):
        start, wall = time.perf_counter(), time.time()
        try:
            yield
        finally:
            self.times[f"{self.prefix}/{phase}"] = self.times.get(f"{self.prefix}/{phase}", 0.0) + (
                time.perf_counter() - start
            )
            self.spans.append((phase, wall, time.time()))


@dataclass
class TrainResult:
    status: str  # completed | preempted
    step: int
    checkpoint: Path | None
    best_checkpoint: Path | None
    final_metrics: dict = field(default_factory=dict)


# ---- the trainer --------------------------------------------------------------------------------------------
class GRPOTrainer:
    """GRPO over `train_rows`, validating on `val_rows`.

    `components` (`trainer.interfaces.Components`: the policy, the generation backend, the rollout function, the
    tokenizer and, for `grpo.prompt_selection` only, the expert trajectories) are built from `cfg` by
    `trainer.components.build_components` in a real run; tests pass their own.
    """

    def __init__(
        self,
        cfg: DictConfig,
        train_rows: Sequence[dict],
        val_rows: Sequence[dict],
        components: Components,
        *,
        log_dir: str | Path | None = None,
        refit_dtype: str = "bfloat16",
        echo: bool = True,
    ):
        self.cfg, self.components, self.refit_dtype = cfg, components, refit_dtype
        self.policy: Policy = components.policy
        self.generation: Generation = components.generation
        self.rollout_fn: RolloutFn = components.rollout_fn
        self.tokenizer = components.tokenizer
        expert_fn = components.expert_fn
        g = cfg.grpo
        if int(g.max_rollout_turns) != 1:
            raise ValueError(
                f"grpo.max_rollout_turns={g.max_rollout_turns}: an episode is one rollout here, its tool steps "
                "happen inside it; set env.max_steps for more steps and leave grpo.max_rollout_turns at 1"
            )
        self.seed = int(g.seed)
        self.num_generations = int(g.num_generations_per_prompt)
        self.num_prompts = int(g.num_prompts_per_step)
        drawn = prompts_drawn_per_step(cfg)
        self.scorer: ExpertScorer | None = None
        if drawn > self.num_prompts:
            if expert_fn is None:
                raise ValueError(
                    "grpo.prompt_selection.pool_factor > 1 scores expert trajectories, but the trainer "
                    "was given no expert_fn"
                )
            self.scorer = ExpertScorer(expert_fn)
        self.loader = PromptLoader(train_rows, drawn, self.seed)
        self.val_rows = list(val_rows)[: int(g.max_val_samples)] if g.max_val_samples else list(val_rows)
        self.total_steps = total_training_steps(cfg, len(train_rows))
        self.kl_on = float(cfg.loss_fn.reference_policy_kl_penalty) != 0
        ck = cfg.checkpointing
        self.checkpoints = (
            CheckpointManager(ck.checkpoint_dir, ck.metric_name, bool(ck.higher_is_better), ck.keep_top_k)
            if ck.enabled
            else None
        )
        self.step = 0
        self.consumed_samples = 0
        self.last_phase_spans: list[tuple[str, float, float]] = []  # the last step's (phase, start, end)
        resume_from = self._resume()
        run_config = OmegaConf.to_container(cfg, resolve=True)
        if not isinstance(run_config, dict):
            raise TypeError(f"the run config resolved to a {type(run_config).__name__}, not a mapping")
        self.metrics = MetricsLogger(
            log_dir or cfg.logger.log_dir,
            cfg.logger.wandb,
            bool(cfg.logger.wandb_enabled),
            resume_step=self.step,
            run_config={str(key): value for key, value in run_config.items()},
            echo=echo,
        )
        self.resumed_from = resume_from
        if resume_from is not None:
            self._restore_step_row(resume_from)
        self.clock = time.monotonic  # for grpo.max_train_minutes (tests substitute their own)

    # ---- resume -------------------------------------------------------------------------------------------
    def _resume(self) -> Path | None:
        if self.checkpoints is None:
            return None
        path = self.checkpoints.resolve(self.cfg.checkpointing.resume_from)
        if path is None:
            return None
        info = CheckpointManager.training_info(path)
        self.policy.load(path / "policy")
        self.loader.load_state_dict(json.loads((path / "train_dataloader.json").read_text()))
        rng = torch.load(path / "rng_state.pt", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        self.step, self.consumed_samples = int(info["current_step"]), int(info["consumed_samples"])
        # the engines still hold the initial weights: refit them with the checkpoint's
        refit_engines(self.components, self.refit_dtype)
        print(f"[grpo] resumed from {path} at step {self.step}", flush=True)
        return path

    def _restore_step_row(self, checkpoint: Path) -> None:
        """The resumed step's metrics row, from its checkpoint, when metrics.jsonl does not have it: the job
        ended after the checkpoint was complete and before the row was written."""
        saved = checkpoint / STEP_METRICS
        if not saved.exists() or any(row.get("step") == self.step for row in self.metrics.read()):
            return
        row = json.loads(saved.read_text())
        row.pop("step", None)
        self.metrics.log(self.step, row)

    # ---- the loop -----------------------------------------------------------------------------------------
    def _time_budget(self) -> tuple[float | None, str]:
        """Seconds this job's loop may take, from now, and which key sets them: `grpo.max_train_minutes` (a budget
        per job) or `grpo.deadline` (unix time the loop must end by: a reservation's end, `make demo`'s budget)."""
        g = self.cfg.grpo
        budget, bound_by = None, ""
        if g.max_train_minutes:
            budget, bound_by = float(g.max_train_minutes) * 60, f"grpo.max_train_minutes={g.max_train_minutes}"
        if g.deadline:
            left = float(g.deadline) - time.time()
            if budget is None or left < budget:
                budget, bound_by = left, f"grpo.deadline ({time.strftime('%H:%M:%S', time.localtime(g.deadline))})"
        return budget, bound_by

    def fit(self) -> TrainResult:
        g = self.cfg.grpo
        last = None
        started = self.clock()
        budget, bound_by = self._time_budget()  # from `started`: the step-0 validation counts
        if self.step == 0 and g.val_at_start and self.val_rows:
            self.metrics.log(0, self.validate(0))
            self.metrics.plot()
        loop_started, steps_run = self.clock(), 0
        while self.step < self.total_steps:
            if signals.preemption_requested():
                return self._stop_for_preemption()
            self.step += 1
            metrics = self.train_step(self.step)
            steps_run += 1
            is_last = self.step == self.total_steps
            if budget is not None and not is_last:
                # stop when another step (at this job's mean pace, validations included) would overrun the budget
                now = self.clock()
                if now - started + (now - loop_started) / steps_run > budget:
                    is_last = True
                    print(
                        f"[grpo] {bound_by} reached: step {self.step} is the last of this job (resume continues "
                        f"to step {self.total_steps})",
                        flush=True,
                    )
            if self.val_rows and ((g.val_period and self.step % int(g.val_period) == 0) or (is_last and g.val_at_end)):
                metrics.update(self.validate(self.step))
            with self._timer_into(metrics, "checkpointing"):
                ckpt = self._maybe_save(metrics, force=is_last or signals.preemption_requested())
            last = ckpt or last
            self.metrics.log(self.step, metrics)
            if "val:accuracy" in metrics:
                self.metrics.plot()
            if is_last:
                break
        self.metrics.finish()
        return TrainResult(
            "completed",
            self.step,
            self.checkpoints.latest() if self.checkpoints else None,
            self.checkpoints.best() if self.checkpoints else None,
            self.metrics.read()[-1] if self.metrics.read() else {},
        )

    def train_step(self, step: int) -> dict[str, Any]:
        """One GRPO step; returns its metrics."""
        timer = PhaseTimer("timing/train")
        t0 = time.perf_counter()
        selection: dict[str, Any] = {}
        with timer("data_processing"):
            prompts = self.loader.next_batch()
        if self.scorer is not None:
            with timer("prompt_selection"):
                candidates = len(prompts)
                prompts, kept_q = select_prompts(
                    prompts, self.num_prompts, self.num_generations, self.scorer, self.policy
                )
                selection = {
                    "train:selection_candidates": candidates,
                    "train:selection_expert_prob_mean": float(kept_q.mean()),
                }
        with timer("data_processing"):
            rows = [row for row in prompts for _ in range(self.num_generations)]
            group_ids = torch.arange(len(prompts)).repeat_interleave(self.num_generations)
        with timer("generation"):
            rollouts = self.rollout_fn(rows, self.generation, self.tokenizer, self.cfg, step_seed(self.seed, step))
        if len(rollouts) != len(rows):
            raise RuntimeError(f"rollout_fn returned {len(rollouts)} rollouts for {len(rows)} prompts")
        with timer("prepare_for_training/engine_sleep"):
            # engines built with vllm_cfg.enable_sleep_mode free their GPU memory for the policy's step (a
            # no-op elsewhere); they wake for the refit
            self.generation.sleep()
        with timer("reward_calculation"):
            rewards = torch.tensor([float(r.reward) for r in rollouts])
        with timer("advantage_calculation"):
            advantages = compute_advantages(
                rewards,
                group_ids,
                bool(self.cfg.grpo.use_leave_one_out_baseline),
                bool(self.cfg.grpo.normalize_rewards),
            )
            batch = rollouts_to_batch(rollouts, advantages)
            if not self.cfg.loss_fn.token_level_loss:
                batch["advantages"] = batch["advantages"] * sequence_level_weights(
                    batch["loss_mask"], int(self.cfg.policy.train_global_batch_size)
                )
            train_batch = batch
            if (
                self.cfg.grpo.skip_zero_advantage_rollouts
                and not self.kl_on
                and len(rollouts) <= int(self.cfg.policy.train_global_batch_size)
            ):
                train_batch = informative_rows(batch)
        with timer("policy_and_reference_logprobs"):
            if len(train_batch["input_ids"]) > int(self.cfg.policy.train_global_batch_size):
                # several optimizer steps: the later ones are off-policy and need the old log-probs; a single
                # step is on-policy and the policy takes them from its own training forward pass
                train_batch["prev_logprobs"] = self.policy.get_logprobs(train_batch)
            if self.kl_on:
                train_batch["reference_logprobs"] = self.policy.get_logprobs(train_batch, use_reference=True)
        with timer("policy_training"):
            train_metrics = self.policy.train(train_batch)
        with timer("prepare_for_generation/engine_wake"):
            self.generation.wake_up()
        with timer("prepare_for_generation/transfer_and_update_weights"):
            refit_engines(self.components, self.refit_dtype)
        self.consumed_samples += len(prompts)
        self.last_phase_spans = timer.spans
        step_time = time.perf_counter() - t0
        timer.times["timing/train/total_step_time"] = step_time

        gen_tokens = float(batch["loss_mask"].sum())
        metrics: dict[str, Any] = {
            "train:reward_mean": float(rewards.mean()),
            "train:accuracy": accuracy_summary(rollouts)["accuracy"],
            "train:advantage_mean": float(advantages.mean()),
            "train:advantage_min": float(advantages.min()),
            "train:advantage_max": float(advantages.max()),
            "train:loss": train_metrics["loss"],
            "grad_norm": train_metrics["grad_norm"],
            "train:lr": train_metrics["lr"],
            "train:global_valid_toks": gen_tokens,
            "train:trained_rollout_fraction": train_batch["input_ids"].shape[0] / len(rollouts),
            "train:mean_gen_tokens_per_sample": gen_tokens / len(rollouts),
            "train:mean_total_tokens_per_sample": float(batch["input_lengths"].float().mean()),
            "train:truncated_fraction": sum(bool(getattr(r, "truncated", False)) for r in rollouts) / len(rollouts),
            "train:epoch": self.loader.epoch,
            "train:consumed_samples": self.consumed_samples,
            "performance:samples_per_sec": len(rollouts) / step_time,
            "performance:generation_tokens_per_sec": gen_tokens / max(timer.times["timing/train/generation"], 1e-9),
            "refit:seconds": timer.times["timing/train/prepare_for_generation/transfer_and_update_weights"],
        }
        for key in (
            "probs_ratio",
            "probs_ratio_min",
            "probs_ratio_max",
            "probs_ratio_clamped",
            "kl_penalty",
            "token_mult_prob_error",
        ):
            if key in train_metrics:
                metrics[f"train:{key}"] = train_metrics[key]
        metrics.update(selection)
        metrics.update(timer.times)
        return metrics

    def validate(self, step: int) -> dict[str, Any]:
        """val:accuracy over the validation rows (one rollout each) with the current weights."""
        t0 = time.perf_counter()
        rollouts = self.rollout_fn(
            self.val_rows, self.generation, self.tokenizer, self.cfg, step_seed(self.seed, step, "validation")
        )
        scores = accuracy_summary(rollouts)
        out = {
            "val:accuracy": scores["accuracy"],
            "val:reward_mean": sum(float(r.reward) for r in rollouts) / max(len(rollouts), 1),
            "val:num_samples": len(rollouts),
            "timing/validation/total": time.perf_counter() - t0,
        }
        out.update({f"val:accuracy/{cat}": entry["accuracy"] for cat, entry in scores["per_category"].items()})
        return out

    # ---- checkpoints --------------------------------------------------------------------------------------
    @contextmanager
    def _timer_into(self, metrics: dict, phase: str):
        start = time.perf_counter()
        yield
        metrics[f"timing/train/{phase}"] = time.perf_counter() - start

    def _maybe_save(self, metrics: dict, force: bool = False) -> Path | None:
        if self.checkpoints is None:
            return None
        period = self.cfg.checkpointing.save_period
        if not force and not (period and self.step % int(period) == 0):
            return None
        return self.save_checkpoint(metrics)

    def save_checkpoint(self, metrics: dict | None = None) -> Path:
        if self.checkpoints is None:
            raise RuntimeError("checkpointing.enabled is false: this trainer has no checkpoint directory to save to")
        metrics = metrics or {}
        info = {
            "consumed_samples": self.consumed_samples,
            "epoch": self.loader.epoch,
            "total_steps": self.total_steps,
        }
        info.update({k: v for k, v in metrics.items() if k.startswith("val:")})
        loader_state = self.loader.state_dict()

        def write(directory: Path) -> None:
            self.policy.save(directory / "policy")
            if metrics:  # the step's row, for a resume whose metrics.jsonl lost it (killed between save and log)
                (directory / STEP_METRICS).write_text(json.dumps({"step": self.step, **metrics}, sort_keys=True))
            (directory / "train_dataloader.json").write_text(json.dumps(loader_state, indent=2))
            torch.save(
                {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
                directory / "rng_state.pt",
            )

        return self.checkpoints.save(self.step, info, OmegaConf.to_yaml(self.cfg, resolve=True), write)

    def _stop_for_preemption(self) -> TrainResult:
        path = None
        if self.checkpoints is not None:
            latest = self.checkpoints.latest()
            already = latest is not None and CheckpointManager.training_info(latest)["current_step"] == self.step
            path = latest if already else (self.save_checkpoint() if self.step > 0 else None)
        print(
            f"[grpo] preemption requested ({signals.preemption_reason()}): saved step {self.step}, stopping", flush=True
        )
        self.metrics.finish()
        return TrainResult("preempted", self.step, path, self.checkpoints.best() if self.checkpoints else None)


def prompts_drawn_per_step(cfg: DictConfig) -> int:
    """Rows a step takes from the data: num_prompts_per_step, times grpo.prompt_selection.pool_factor."""
    g = cfg.grpo
    factor = float(g.prompt_selection.pool_factor)
    if factor < 1:
        raise ValueError(f"grpo.prompt_selection.pool_factor must be >= 1 (1 = off), got {factor}")
    return max(int(g.num_prompts_per_step), round(int(g.num_prompts_per_step) * factor))


def total_training_steps(cfg: DictConfig, num_train_rows: int) -> int:
    """min(grpo.max_num_steps, grpo.max_num_epochs x steps per epoch); either may be null (not both)."""
    g = cfg.grpo
    per_epoch = math.ceil(num_train_rows / prompts_drawn_per_step(cfg))
    limits = [int(g.max_num_steps)] if g.max_num_steps else []
    if g.max_num_epochs:
        limits.append(int(g.max_num_epochs) * per_epoch)
    if not limits:
        raise ValueError("set grpo.max_num_steps or grpo.max_num_epochs (both are null)")
    return min(limits)
