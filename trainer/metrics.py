"""Training metrics: `metrics.jsonl` (one line per step), wandb, a console line, and the reward/accuracy plot.

Metric names follow the seeds' runs: `train:reward_mean`, `train:accuracy`, `train:advantage_mean`,
`train:loss`, `grad_norm`, `val:accuracy`, `performance:samples_per_sec` (the seeds' "E2E (Samples/sec)"),
`performance:generation_tokens_per_sec`, `refit:seconds`, `timing/train/<phase>`.
On resume, lines of steps after the checkpoint (written by the interrupted run) are dropped, so the file reads
as one uninterrupted run. Accuracy (`train:accuracy`, `val:accuracy`, the eval stage's summary) is computed here
only: `is_success` / `accuracy_summary`. Only the standard library and infra.io are imported at module level.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from infra.io import atomic_path, atomic_write_text, read_live_jsonl

# A reward counts as success when it is full marks, 1.0, up to float rounding. env_sim's reward is 0.0 or 1.0,
# so the tolerance changes nothing there; it keeps a full reward that went through float arithmetic (a mean of
# parts, a float32 tensor and back) a success, and is far too small to count any partial reward.
SUCCESS_TOLERANCE = 1e-9

CONSOLE_KEYS = [
    ("train:reward_mean", "reward"),
    ("train:accuracy", "acc"),
    ("train:loss", "loss"),
    ("grad_norm", "gnorm"),
    ("val:accuracy", "val_acc"),
    ("performance:samples_per_sec", "samples/s"),
    ("timing/train/total_step_time", "step_s"),
]


class MetricsLogger:
    def __init__(
        self,
        log_dir: str | Path,
        wandb_cfg: Mapping[str, Any] | None = None,
        wandb_enabled: bool = False,
        resume_step: int | None = None,
        run_config: Mapping[str, Any] | None = None,
        echo: bool = True,
    ):
        self.dir = Path(log_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl"
        self.plot_path = self.dir / "reward_accuracy.png"
        self.echo = echo
        self._truncate_after(resume_step or 0)
        self.wandb_run = self._start_wandb(wandb_cfg or {}, run_config) if wandb_enabled else None

    def _truncate_after(self, step: int) -> None:
        if not self.jsonl.exists():
            return
        kept = [row for row in read_live_jsonl(self.jsonl) if row.get("step", 0) <= step]  # a torn line goes too
        atomic_write_text(self.jsonl, "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept))

    def _start_wandb(self, wandb_cfg: Mapping[str, Any], run_config):
        import wandb

        os.environ.setdefault("WANDB_MODE", "online" if os.environ.get("WANDB_API_KEY") else "offline")
        id_file = self.dir / "wandb_run_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        atomic_write_text(id_file, run_id)
        return wandb.init(
            project=wandb_cfg.get("project"),
            name=wandb_cfg.get("name"),
            id=run_id,
            resume="allow",
            dir=str(self.dir),
            config=dict(run_config or {}),
            reinit="finish_previous",
        )

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        clean = {k: _plain(v) for k, v in metrics.items()}
        with open(self.jsonl, "a") as fh:  # one short append per step; a torn last line is dropped on resume
            fh.write(json.dumps({"step": step, **clean}, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in clean.items() if isinstance(v, (int, float))}, step=step)
        if self.echo:
            print(format_console_line(step, clean), flush=True)

    def read(self) -> list[dict]:
        return read_live_jsonl(self.jsonl)

    def plot(self) -> Path:
        """Rewrite `reward_accuracy.png`: train:reward_mean and val:accuracy against step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.read()
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, style in (("train:reward_mean", "-"), ("val:accuracy", "o-")):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), style, label=key)
        ax.set_xlabel("step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        ax.set_title("GRPO: train reward and validation accuracy")
        fig.tight_layout()
        try:
            with atomic_path(self.plot_path) as tmp:
                fig.savefig(tmp, dpi=100, format="png")
        finally:
            plt.close(fig)
        return self.plot_path

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def is_success(reward: float) -> bool:
    """Whether an episode's reward counts as a solved task (see SUCCESS_TOLERANCE)."""
    return float(reward) >= 1.0 - SUCCESS_TOLERANCE


def accuracy_summary(rollouts: Iterable[Any]) -> dict[str, Any]:
    """Accuracy overall and per category of episodes with `.reward` (and `.category`, else "all"):
    {"accuracy", "num_episodes", "per_category": {category: {"accuracy", "episodes"}}}; no episodes: 0.0."""
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for r in rollouts:
        by_cat[str(getattr(r, "category", "all"))].append(is_success(r.reward))
    total = [ok for values in by_cat.values() for ok in values]
    return {
        "accuracy": sum(total) / len(total) if total else 0.0,
        "num_episodes": len(total),
        "per_category": {cat: {"accuracy": sum(v) / len(v), "episodes": len(v)} for cat, v in sorted(by_cat.items())},
    }


def format_console_line(step: int, metrics: Mapping[str, Any]) -> str:
    parts = [f"step {step}"]
    for key, short in CONSOLE_KEYS:
        value = metrics.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{short}={value:.4g}")
    return " | ".join(parts)


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
