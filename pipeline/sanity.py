"""Stage `sanity`: prove, before GPUs are spent, that every part a training run needs works.

Checks (run in order; `sanity.checks` picks which):
  data         the prepared files exist, parse, carry `agent_ref`, and have both splits
  environment  replaying ground truths scores 1.0; doing nothing scores 0.0 where the task changes state
  tokenizer    the chat template renders the tools and a tool-call round trip; prompts fit the context
  generation   the generation backend starts and plays multi-turn episodes with finite log-probs
  train_step   one GRPO step: finite loss and grad norm, weights change, refit into the engines
  checkpoint   save -> load gives back the same weights

Writes `<run.root>/sanity/report.json` (pass/fail, seconds and details per check) and raises when a check
failed, so that the chain's later stages are cancelled with the reason in the job log.
"""

from __future__ import annotations

import math
import random
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig

from infra.config import run_root, with_values

if TYPE_CHECKING:
    from trainer.grpo.loop import GRPOTrainer
    from trainer.interfaces import Components

ALL_CHECKS = ("data", "environment", "tokenizer", "generation", "train_step", "checkpoint")
ENV_REPLAY_ROWS = 50


class SanityFailed(RuntimeError):
    """At least one check failed; the message lists them."""


class _Context:
    """What the checks share: rows, the model dir, lazily built workers."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.root = run_root(cfg)
        self.out_dir = self.root / "sanity"
        self.train_rows: list[dict] = []
        self.val_rows: list[dict] = []
        self.components: Components | None = None
        self.trainer: GRPOTrainer | None = None
        self.rollouts: list = []

    def rows(self) -> list[dict]:
        if not self.train_rows:
            from infra.io import read_jsonl

            self.train_rows = read_jsonl(self.root / "prepare" / "train_prepare.jsonl")
            self.val_rows = read_jsonl(self.root / "prepare" / "validation_prepare.jsonl")
        return self.train_rows

    def sample_rows(self, n: int) -> list[dict]:
        rows = self.rows()
        return random.Random(int(self.cfg.run.seed)).sample(rows, min(n, len(rows)))

    def trainer_cfg(self) -> DictConfig:
        """The run's config, shrunk to one tiny step whose artifacts stay under sanity/."""
        n = max(1, int(self.cfg.sanity.num_rollouts))
        return with_values(
            self.cfg,
            {
                "grpo": {
                    "num_prompts_per_step": n,
                    "num_generations_per_prompt": 2,
                    "max_num_steps": 1,
                    "val_at_start": False,
                    "val_at_end": False,
                    "val_period": 0,
                },
                "checkpointing": {
                    "enabled": True,  # the checkpoint check saves and loads, whether or not the run does
                    "checkpoint_dir": str(self.out_dir / "checkpoints"),
                    "keep_top_k": 1,
                    "resume_from": None,
                },
                "logger": {"log_dir": str(self.out_dir), "wandb_enabled": False},
            },
        )

    def build(self) -> Components:
        if self.components is None:
            from trainer.components import build_components, initial_model_dir
            from trainer.distributed import init_ray, ray_address

            init_ray(address=ray_address(self.cfg))
            self.model_dir = initial_model_dir(self.cfg)
            self.components = build_components(self.trainer_cfg(), self.model_dir, total_steps=1)
        return self.components

    def shutdown(self) -> None:
        if self.components is not None:
            self.components.shutdown()


# ---- checks: each returns a details dict and raises (AssertionError or any error) when it fails -------------
def check_data(ctx: _Context) -> dict:
    train = ctx.rows()
    assert train, "train_prepare.jsonl has no rows"
    assert ctx.val_rows, "validation_prepare.jsonl has no rows"
    for split, rows in (("train", train), ("validation", ctx.val_rows)):
        missing = [r.get("id") for r in rows if "agent_ref" not in r]
        assert not missing, f"{split}: rows without agent_ref (prepare did not run?): ids {missing[:5]}"
    return {
        "train_rows": len(train),
        "validation_rows": len(ctx.val_rows),
        "categories": sorted({r["category"] for r in train}),
    }


def check_environment(ctx: _Context) -> dict:
    from env_sim.workplace_assistant.verify import verify

    rows = ctx.sample_rows(ENV_REPLAY_ROWS)
    bad_replays = [r["id"] for r in rows if verify(r["ground_truth"], r["ground_truth"]).reward != 1.0]
    assert not bad_replays, f"ground truth replayed onto itself did not score 1.0 for ids {bad_replays[:10]}"
    changing = [r for r in rows if verify([], r["ground_truth"]).reward == 0.0]
    assert changing, f"none of {len(rows)} sampled ground truths changes the database: the verifier cannot tell"
    read_only = [{"name": "company_directory_find_email_address", "arguments": '{"name": "a"}'}]
    read_wins = [r["id"] for r in changing if verify(read_only, r["ground_truth"]).reward != 0.0]
    assert not read_wins, f"a read-only prediction scored 1.0 on state-changing tasks {read_wins[:10]}"
    return {"replayed_rows": len(rows), "state_changing_rows": len(changing)}


def check_tokenizer(ctx: _Context) -> dict:
    from transformers import AutoTokenizer

    from env_sim.agent import Episode
    from env_sim.formats import get_format
    from trainer.components import initial_model_dir
    from trainer.rollout import episode_options

    model_dir = initial_model_dir(ctx.cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert getattr(tokenizer, "chat_template", None), f"{model_dir}: tokenizer has no chat template"
    env = ctx.cfg.env
    fmt = get_format(env.tool_format)
    row = ctx.sample_rows(1)[0]
    episode = Episode(dict(row), fmt, **episode_options(env))
    text = tokenizer.apply_chat_template(episode.messages, tokenize=False, add_generation_prompt=True)
    first_tool = row["responses_create_params"]["tools"][0]["name"]
    assert first_tool in text, f"the rendered prompt does not mention the first tool '{first_tool}'"
    calls = row["ground_truth"] or [{"name": "company_directory_find_email_address", "arguments": '{"name": "a"}'}]
    parsed = fmt.parse(fmt.format_tool_calls(calls))
    assert not parsed.errors, f"tool-call round trip failed: {parsed.errors}"
    assert [c["name"] for c in parsed.tool_calls] == [c["name"] for c in calls], "tool-call round trip lost calls"
    lengths = [
        len(
            tokenizer(
                tokenizer.apply_chat_template(
                    Episode(dict(r), fmt, **episode_options(env)).messages, tokenize=False, add_generation_prompt=True
                ),
                add_special_tokens=False,
            )["input_ids"]
        )
        for r in ctx.sample_rows(20)
    ]
    limit = int(ctx.cfg.policy.max_total_sequence_length)
    assert max(lengths) < limit, (
        f"prompts up to {max(lengths)} tokens do not fit policy.max_total_sequence_length={limit}"
    )
    return {
        "model_dir": str(model_dir),
        "prompt_tokens_max": max(lengths),
        "prompt_tokens_mean": round(sum(lengths) / len(lengths), 1),
        "max_total_sequence_length": limit,
    }


def check_generation(ctx: _Context) -> dict:
    from trainer.rollout import collect_rollouts

    comp = ctx.build()
    rows = ctx.sample_rows(int(ctx.cfg.sanity.num_rollouts))
    ctx.rollouts = collect_rollouts(rows, comp.generation, comp.tokenizer, ctx.cfg, seed=int(ctx.cfg.run.seed))
    assert len(ctx.rollouts) == len(rows), f"{len(ctx.rollouts)} rollouts for {len(rows)} rows"
    generated = sum(r.num_generated_tokens for r in ctx.rollouts)
    assert generated > 0, "the engine generated no tokens"
    logprobs = [lp for r in ctx.rollouts for lp, m in zip(r.generation_logprobs, r.loss_mask) if m]
    assert all(math.isfinite(lp) and lp <= 1e-4 for lp in logprobs), "generation log-probs are not finite/<= 0"
    return {
        "backend": str(ctx.cfg.policy.generation.backend),
        "rollouts": len(ctx.rollouts),
        "generated_tokens": generated,
        "turns": [r.num_turns for r in ctx.rollouts],
        "rewards": [r.reward for r in ctx.rollouts],
    }


def check_train_step(ctx: _Context) -> dict:
    from trainer.grpo.loop import GRPOTrainer
    from trainer.refit import refit_engines
    from trainer.rollout import collect_rollouts

    if not ctx.rollouts:
        check_generation(ctx)
    comp = ctx.build()
    shutil.rmtree(ctx.out_dir / "checkpoints", ignore_errors=True)
    trainer = GRPOTrainer(ctx.trainer_cfg(), ctx.rows(), [], comp, log_dir=ctx.out_dir, echo=False)
    ctx.trainer = trainer
    metrics = trainer.train_step(1)
    for key in ("train:loss", "grad_norm"):
        assert math.isfinite(float(metrics[key])), f"{key} is not finite: {metrics[key]}"
    # rewards of an untrained model are often all equal (zero advantages, zero gradient): push a batch with
    # advantages +1/-1 through the same update to prove that gradients reach the weights
    before = comp.policy.param_checksums()
    pushed = comp.policy.train(_perturbation_batch(ctx))
    assert math.isfinite(pushed["grad_norm"]) and pushed["grad_norm"] > 0, f"grad_norm {pushed['grad_norm']}"
    assert comp.policy.param_checksums() != before, (
        "a training step with non-zero advantages left the weights unchanged"
    )
    # the engines must take the new weights and still generate
    refit = refit_engines(comp, trainer.refit_dtype)
    rollout = collect_rollouts(ctx.sample_rows(1), comp.generation, comp.tokenizer, ctx.cfg, seed=1)[0]
    assert rollout.num_generated_tokens > 0, "no tokens generated after the refit"
    out = {
        key: metrics[key]
        for key in ("train:loss", "grad_norm", "train:reward_mean", "refit:seconds", "timing/train/total_step_time")
    }
    out["grad_norm_nonzero_advantages"] = pushed["grad_norm"]
    out["refit"] = refit
    return out


def check_checkpoint(ctx: _Context) -> dict:
    if ctx.trainer is None:
        check_train_step(ctx)
    trainer = ctx.trainer
    if trainer is None:
        raise RuntimeError("check_train_step set up no trainer")
    policy = ctx.build().policy
    trainer.step = 1
    path = trainer.save_checkpoint({})
    saved = policy.param_checksums()
    policy.train(_perturbation_batch(ctx))  # move the weights away, then load them back
    assert policy.param_checksums() != saved, "perturbation step did not change weights"
    policy.load(path / "policy")
    assert policy.param_checksums() == saved, "weights after load differ from the saved ones"
    assert (path / "training_info.json").exists(), f"{path} has no training_info.json"
    return {"checkpoint": str(path)}


def _perturbation_batch(ctx: _Context):
    import torch

    from trainer.batch import rollouts_to_batch

    rollouts = ctx.rollouts[:2] or ctx.rollouts
    adv = torch.tensor([1.0, -1.0][: len(rollouts)])
    batch = rollouts_to_batch(rollouts, adv)
    batch["prev_logprobs"] = ctx.build().policy.get_logprobs(batch)
    return batch


CHECKS: dict[str, Callable[[_Context], dict]] = {
    "data": check_data,
    "environment": check_environment,
    "tokenizer": check_tokenizer,
    "generation": check_generation,
    "train_step": check_train_step,
    "checkpoint": check_checkpoint,
}


def run_checks(cfg: DictConfig, names: list[str] | None = None) -> dict:
    names = list(names or cfg.sanity.checks)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise ValueError(f"sanity.checks: unknown check(s) {unknown}; known: {list(ALL_CHECKS)}")
    ctx = _Context(cfg)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name in names:
            start = time.perf_counter()
            entry: dict[str, Any] = {"name": name}
            try:
                entry["details"] = CHECKS[name](ctx)
                entry["passed"] = True
            except Exception as err:  # a failed check is reported, the others still run
                entry["passed"] = False
                entry["error"] = f"{type(err).__name__}: {err}"
                entry["traceback"] = traceback.format_exc(limit=8)
            entry["seconds"] = round(time.perf_counter() - start, 3)
            print(
                f"[sanity] {name:<12} {'PASS' if entry['passed'] else 'FAIL'} {entry['seconds']:8.2f}s "
                f"{entry.get('error', '')}",
                flush=True,
            )
            results.append(entry)
    finally:
        ctx.shutdown()
    return {"passed": all(r["passed"] for r in results), "checks": results}


def run(cfg: DictConfig) -> Path:
    from infra import manifest
    from infra.io import atomic_write_json

    timer = manifest.StageTimer()
    report = run_checks(cfg)
    timer.phase("checks")
    out_dir = run_root(cfg) / "sanity"
    report_path = out_dir / "report.json"
    atomic_write_json(report_path, report)
    if not report["passed"]:
        failed = [f"{r['name']}: {r['error']}" for r in report["checks"] if not r["passed"]]
        raise SanityFailed(f"sanity failed ({report_path}):\n  " + "\n  ".join(failed))
    prepare_dir = run_root(cfg) / "prepare"
    manifest.write_manifest(
        cfg,
        "sanity",
        inputs=[prepare_dir / "train_prepare.jsonl", prepare_dir / "validation_prepare.jsonl"],
        outputs=[report_path],
        timer=timer,
    )
    return out_dir
