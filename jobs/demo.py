"""`make demo`: submit data -> prepare -> sanity -> sft -> train -> eval, follow the jobs, print a summary.

Progress lines say which stage is in which state for how long, and echo the sft stage's line per epoch and each
new line of the train metrics as the jobs write them. The summary reads only artifacts on disk (metrics.jsonl,
manifests, eval/summary.json), so it is the same whether the chain ran on Slurm or through submitit's
LocalExecutor (used when no Slurm cluster answers here). Only the standard library, submitit and omegaconf are imported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infra.io import read_live_jsonl
from jobs import chain, slurm_state, status
from trainer.checkpoint import INFO_FILE, read_training_info
from trainer.checkpoint import best_checkpoint as best_on_disk

HEARTBEAT_S = 60.0
# What the demo leaves after the train loop's deadline: the eval job (~1-1.3 min on 2 cores) and the summary.
EVAL_RESERVE_S = 108.0


def slurm_responding(timeout_s: float = 15.0) -> tuple[bool, str]:
    """(ok, why not): the Slurm commands exist, slurmctld answers with at least one usable node, and accounting
    (slurmdbd) answers `sacct` -- the chain's states come from it."""
    for tool in ("sbatch", "sinfo", "sacct"):
        if shutil.which(tool) is None:
            return False, f"`{tool}` is not installed"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=timeout_s)
        acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as err:
        return False, f"`{' '.join(err.cmd)}` did not answer within {timeout_s:.0f}s"
    if nodes.returncode != 0:
        return False, f"slurmctld does not answer (sinfo: {nodes.stderr.strip()[:200]})"
    usable = [s for s in nodes.stdout.split() if s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing")]
    if not usable:
        return False, f"no usable Slurm node (sinfo states: {' '.join(nodes.stdout.split()) or 'none'})"
    if acct.returncode != 0:
        return False, f"accounting does not answer (sacct: {acct.stderr.strip()[:200]})"
    return True, ""


def demo_overrides(overrides: Iterable[str]) -> list[str]:
    """The demo warms the tiny model up before GRPO (sft on) unless the overrides say otherwise: a random-init
    model would never see a reward."""
    overrides = list(overrides)
    if not any(item.lstrip("+").startswith("sft.enabled=") for item in overrides):
        overrides.append("sft.enabled=true")
    return overrides


# --- metrics -------------------------------------------------------------------------------------------------


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn last line (the job is writing) is skipped."""
    return read_live_jsonl(path)


def metrics_line(stage: str, row: dict[str, Any]) -> str:
    """One short line per logged step, the way the trainer prints it."""
    from trainer.metrics import format_console_line  # light: stdlib + infra.io

    if stage == "sft":
        parts = [f"epoch {row.get('sft:epoch')} to step {row.get('step')}"] + [
            f"{short}={row[key]:.4g}"
            for key, short in (("sft:epoch_nll_mean", "mean nll"), ("sft:copy_exact_prob", "copy check"))
            if isinstance(row.get(key), (int, float))
        ]
        seconds = row.get("sft:epoch_seconds")
        return " | ".join(parts + ([f"{seconds:.0f}s"] if isinstance(seconds, (int, float)) else []))
    return format_console_line(row.get("step", 0), row)


class Progress:
    """Prints state changes of the chain's jobs and the metrics lines the sft/train stages append."""

    def __init__(
        self,
        root: Path,
        stage_jobs: dict[str, str],
        out: Callable[[str], None] = print,
        heartbeat_s: float = HEARTBEAT_S,
    ):
        self.root, self.stage_jobs, self.out, self.heartbeat_s = root, dict(stage_jobs), out, heartbeat_s
        self.states: dict[str, str] = {}
        self.seen_lines = {stage: len(read_metrics(self.metrics_path(stage))) for stage in ("sft", "train")}
        self.last_step: dict[str, Any] = {}  # stage -> the step of its last metrics row (for the heartbeat)
        self.last_print = time.time()
        self.started = time.time()

    def metrics_path(self, stage: str) -> Path:
        return self.root / stage / "metrics.jsonl"

    def _say(self, text: str) -> None:
        self.out(f"  [{time.strftime('%H:%M:%S')} +{time.time() - self.started:4.0f}s] {text}")
        self.last_print = time.time()

    def poll_metrics(self) -> None:
        for stage in ("sft", "train"):
            rows = read_metrics(self.metrics_path(stage))
            if len(rows) < self.seen_lines[stage]:  # a resumed run dropped lines after its checkpoint
                self.seen_lines[stage] = len(rows)
            for row in rows[self.seen_lines[stage] :]:
                if stage == "sft" and "sft:epoch" not in row:
                    continue  # the warm start: a line per epoch, not per step
                self._say(f"{stage:<8} {metrics_line(stage, row)}")
            self.seen_lines[stage] = len(rows)
            if rows:
                self.last_step[stage] = rows[-1].get("step")

    def poll_jobs(self) -> dict[str, str]:
        """stage -> state from sacct; prints changes (and a heartbeat for a long running stage)."""
        records = slurm_state.sacct_records(self.stage_jobs.values())
        for stage, job_id in self.stage_jobs.items():
            rec = records.get(job_id)
            state = rec.state if rec else slurm_state.PENDING  # not in accounting yet
            if state != self.states.get(stage):
                elapsed = (rec.elapsed if rec else "") or "-"
                where = f" on {rec.node_list}" if rec and rec.node_list and state == "RUNNING" else ""
                self._say(f"{stage:<8} job {job_id:<6} {state:<10} elapsed {elapsed}{where}")
                self.states[stage] = state
        running = [s for s, st in self.states.items() if st == "RUNNING"]
        if running and time.time() - self.last_print >= self.heartbeat_s:
            rec = records.get(self.stage_jobs[running[0]])
            elapsed = (rec.elapsed if rec else "") or "-"
            step = self.last_step.get(running[0])
            at = f", step {step}" if step else ""
            self._say(f"{running[0]:<8} job {self.stage_jobs[running[0]]:<6} RUNNING    elapsed {elapsed}{at}")
        return dict(self.states)

    def follow_slurm(self, poll_s: float = 5.0) -> dict[str, str]:
        while True:
            states = self.poll_jobs()
            self.poll_metrics()
            if states and all(slurm_state.is_final(s) for s in states.values()) and len(states) == len(self.stage_jobs):
                return states
            time.sleep(poll_s)


# --- summary -------------------------------------------------------------------------------------------------


def _manifest_extra(root: Path, stage: str) -> dict[str, Any]:
    path = root / stage / "manifest.json"
    try:
        return json.loads(path.read_text()).get("extra", {}) if path.exists() else {}
    except json.JSONDecodeError:
        return {}


def _manifest_seconds(root: Path, stage: str) -> float | None:
    path = root / stage / "manifest.json"
    try:
        return float(json.loads(path.read_text())["timings"]["seconds"]) if path.exists() else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def best_checkpoint(root: Path, metric: str = "val:accuracy") -> tuple[Path | None, float | None]:
    """(path, metric value): the train manifest's best checkpoint when it is still complete on disk, else the
    complete step_N with the highest metric (trainer.checkpoint finds them)."""
    recorded = _manifest_extra(root, "train").get("best_checkpoint")
    path = Path(recorded) if recorded and (Path(recorded) / INFO_FILE).exists() else None
    path = path or best_on_disk(root / "train" / "checkpoints", metric)
    if path is None:
        return None, None
    value = read_training_info(path).get(metric)
    return path, value if isinstance(value, (int, float)) else None


def summary_lines(root: Path, stages: Iterable[str], job_rows: list[status.StageStatus] | None = None) -> list[str]:
    """The table `make demo` ends with: accuracy at warm start / best / final, speed, eval, where things are."""
    lines = [f"== demo summary ({root}) =="]
    rows = {r.stage: r for r in (job_rows or [])}
    lines.append(f"{'stage':<8} {'job':<6} {'state':<11} {'wall':>8}")
    for stage in stages:
        row = rows.get(stage)
        seconds = _manifest_seconds(root, stage)
        wall = row.elapsed if row and row.elapsed else (f"{seconds:.0f}s" if seconds is not None else "-")
        state = row.state if row and row.state else ("done" if seconds is not None else "-")
        lines.append(f"{stage:<8} {(row.job_id if row else '') or '-':<6} {state:<11} {wall:>8}")

    metrics = read_metrics(root / "train" / "metrics.jsonl")
    vals = [
        (r["step"], r["val:accuracy"], r.get("val:num_samples"))
        for r in metrics
        if isinstance(r.get("val:accuracy"), (int, float))
    ]
    lines.append("")
    if vals:
        warm = next((v for v in vals if v[0] == 0), None)
        best = max(vals, key=lambda v: v[1])
        final = vals[-1]
        n = final[2] or "?"
        warm_text = f"{warm[1]:.3f} (step 0)" if warm else "- (no step 0 validation)"
        lines.append(
            f"val:accuracy   warm start {warm_text}   best {best[1]:.3f} (step {best[0]})   "
            f"final {final[1]:.3f} (step {final[0]})   on {n} held-out tasks"
        )
        if warm:
            lines.append(f"               best - warm start = {best[1] - warm[1]:+.3f}")
    else:
        lines.append(f"val:accuracy   - (no validation rows in {root / 'train' / 'metrics.jsonl'})")
    speeds = [
        r["performance:samples_per_sec"]
        for r in metrics
        if isinstance(r.get("performance:samples_per_sec"), (int, float))
    ]
    if speeds:
        lines.append(f"samples/s      {sum(speeds) / len(speeds):.3f} mean over {len(speeds)} GRPO steps")
    sft = _manifest_extra(root, "sft")
    if sft.get("first_nll") is not None:
        epochs = (
            f", the first {sft['short_context_epochs']} epochs with the short context"
            if sft.get("short_context_epochs")
            else ""
        )
        lines.append(
            f"sft nll        {sft['first_nll']:.3f} -> {sft['final_nll']:.3f} over {sft.get('steps')} steps" + epochs
        )

    summary_path = root / "eval" / "summary.json"
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        lines.append(
            f"eval accuracy  {summary['accuracy']:.3f} over {summary['num_episodes']} episodes "
            f"({summary.get('model_kind', '?')}: {summary.get('model', '?')})"
        )
        for cat, entry in summary.get("per_category", {}).items():
            lines.append(f"  {cat:<50} {entry['accuracy']:.3f}  ({entry['episodes']})")
    else:
        lines.append(f"eval accuracy  - ({summary_path} missing)")

    best_path, best_value = best_checkpoint(root)
    lines.append("")
    where = [
        ("plot", root / "train" / "reward_accuracy.png"),
        ("metrics", root / "train" / "metrics.jsonl"),
        ("best checkpoint", best_path),
        ("HF model", root / "train" / "hf_model"),
        ("eval summary", summary_path),
    ]
    for name, path in where:
        text = str(path) if path is not None and path.exists() else f"(missing{': ' + str(path) if path else ''})"
        if name == "best checkpoint" and best_value is not None:
            text += f"   (val:accuracy {best_value:.3f})"
        lines.append(f"{name:<15} {text}")
    return lines


# --- the command ---------------------------------------------------------------------------------------------


def run_demo(cfg: DictConfig, nodes: int = 1, out: Callable[[str], None] = print, poll_s: float = 5.0) -> int:
    """Submit the chain up to eval, follow it, print the summary. 0 when every stage completed.

    `run.demo_budget_minutes` (tiny_cpu: 28): the whole chain's time from now. The train loop gets `grpo.deadline`
    so that eval still fits (unless the config sets a deadline): a warm start that ran longer shortens GRPO
    instead of overrunning the budget."""
    root = Path(cfg.run.root)
    stages = chain.chain_stages(cfg, "eval")
    use_cluster = bool(cfg.slurm.use_cluster)
    out(
        f"demo: run {cfg.run.name} on {'the Slurm cluster' if use_cluster else 'this machine (LocalExecutor)'}: "
        f"{' -> '.join(stages)}; artifacts in {root}"
    )
    started = time.time()
    budget_minutes = cfg.run.demo_budget_minutes
    if budget_minutes and cfg.grpo.deadline is None and "train" in stages:
        cfg.grpo.deadline = started + float(budget_minutes) * 60 - EVAL_RESERVE_S
        out(
            f"demo: {budget_minutes:g}-minute budget: the train loop ends by "
            f"{time.strftime('%H:%M:%S', time.localtime(cfg.grpo.deadline))} at the latest (grpo.deadline)"
        )
    ok = True
    if use_cluster:
        plans = chain.submit_chain(cfg, "eval", nodes=nodes, log=out)
        stage_jobs = {p.stage: p.job_id for p in plans if p.job_id}
        if stage_jobs:
            states = Progress(root, stage_jobs, out).follow_slurm(poll_s)
            ok = all(s == "COMPLETED" for s in states.values())
        job_rows = status.collect_status(cfg)
    else:
        progress = Progress(root, {}, out)
        stop = threading.Event()

        def echo_metrics() -> None:
            while not stop.wait(poll_s):
                progress.poll_metrics()

        watcher = threading.Thread(target=echo_metrics, daemon=True)
        watcher.start()
        try:
            chain.submit_chain(cfg, "eval", nodes=1, log=lambda text: progress._say(text.strip()))
        except Exception as err:  # the failing stage's traceback is in its log folder
            out(f"demo: a stage failed: {type(err).__name__}: {str(err)[-2000:]}")
            ok = False
        finally:
            stop.set()
            watcher.join(timeout=poll_s + 1)
            progress.poll_metrics()
        job_rows = None
    out(f"\ndemo {'finished' if ok else 'FAILED'} after {time.time() - started:.0f}s")
    out("\n".join(summary_lines(root, stages, job_rows)))
    if not ok:
        out("see the failing stage's log: make logs STAGE=<stage>")
    return 0 if ok else 1
