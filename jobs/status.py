"""`status` and `logs`: what each stage's job is doing, why it waits or was cancelled, what it left on disk.

States come from Slurm's accounting (`sacct`); reasons from `scontrol` while slurmctld still knows the job,
otherwise they are derived from the dependency recorded at submission (a job cancelled because its afterok
parent failed is reported as DependencyNeverSatisfied, naming the parent and its state). Reading Slurm is
jobs.slurm_state's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infra import manifest
from jobs import slurm_state
from jobs.chain import load_record
from jobs.slurm_state import FAILED_STATES, SacctRecord
from jobs.stages import STAGE_ORDER, slurm_available


@dataclass
class StageStatus:
    stage: str
    job_id: str = ""
    state: str = ""
    reason: str = ""
    elapsed: str = ""
    nodes: str = ""
    artifacts: str = ""


def _reason(job_id: str, acct: SacctRecord | None, entry: dict[str, Any], states: dict[str, str]) -> str:
    state = acct.state if acct else ""
    if state in ("COMPLETED", "RUNNING"):
        return ""
    live = slurm_state.live_job(job_id)
    reason, dependency = live.get("Reason", ""), live.get("Dependency", "")
    reason = "" if reason == "None" else reason
    parent = (entry.get("dependency") or "").partition(":")[2]
    parent_state = states.get(parent, "")
    if not reason and state == "CANCELLED" and acct is not None and not acct.started and parent_state in FAILED_STATES:
        reason = "DependencyNeverSatisfied"
    if reason == "DependencyNeverSatisfied" and parent:
        return f"DependencyNeverSatisfied: afterok parent {parent} {parent_state or dependency or 'failed'}"
    return reason or (acct.reason if acct else "")


# a Python exception's last line ("ValueError: rows.jsonl:3: ...")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)): (.+)$")


def last_error_line(log_paths: list[Path]) -> str:
    """The last exception line the job's logs hold, skipping submitit's own wrapper; "" when there is none."""
    found = ""
    for path in log_paths:
        for line in _read(path).splitlines():
            match = _EXCEPTION_LINE.match(line.strip())
            if match and not match.group(1).startswith("submitit"):
                found = line.strip()
    return found


# submitit's words when it stops requeueing a job that reached its time limit more than slurm.max_num_timeout times
GAVE_UP_ON_TIMEOUTS = "Job not requeued because: timed-out too many times"


def timed_out_times(acct: SacctRecord, log_paths: list[Path]) -> int:
    """How many times a job that ended at its time limit reached it; 0 when it ended another way. It ended so when
    Slurm killed it there (TIMEOUT), or when submitit gave up requeueing it (FAILED, its log says so). Every earlier
    run that ended REQUEUED (accounting: sacct -D) counts as a time-out too (a preemption's requeue would as well)."""
    gave_up = acct.state == "FAILED" and any(GAVE_UP_ON_TIMEOUTS in _read(path) for path in log_paths)
    return acct.requeues + 1 if acct.state == "TIMEOUT" or gave_up else 0


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def collect_status(cfg: DictConfig) -> list[StageStatus]:
    record = load_record(cfg)
    entries = record.get("stages", {})
    use_slurm = record.get("executor", "slurm") == "slurm" and slurm_available()
    ids = [str(e["job_id"]) for e in entries.values() if e.get("job_id")]
    acct = slurm_state.sacct_records(ids) if use_slurm else {}
    states = {job_id: rec.state for job_id, rec in acct.items()}
    rows = []
    for stage in STAGE_ORDER:
        entry = entries.get(stage)
        if entry is None and not manifest.manifest_path(cfg, stage).exists():
            continue
        entry = entry or {}
        job_id = str(entry.get("job_id") or "")
        row = StageStatus(stage, job_id=job_id)
        if job_id and use_slurm:
            rec = acct.get(job_id)
            row.state = rec.state if rec else "UNKNOWN (not in sacct yet)"
            row.elapsed, row.nodes = (rec.elapsed, rec.node_list) if rec else ("", "")
            row.reason = _reason(job_id, rec, entry, states)
            if rec is not None and rec.state in FAILED_STATES and rec.state != "CANCELLED":
                logs = _job_logs(entry, job_id)
                timeouts = timed_out_times(rec, logs)
                error = last_error_line(logs)
                if timeouts:
                    row.reason = f"timed out {timeouts} time{'s' if timeouts > 1 else ''}: make resume"
                else:
                    row.reason = f"{row.reason}: {error}" if row.reason and error else row.reason or error
        elif entry.get("action") == "skip":
            row.state = "SKIPPED"
            row.reason = entry.get("reason", "")
        elif job_id:
            row.state = "LOCAL"
        ok, why = manifest.check_up_to_date(cfg, stage, entry.get("config_hash"))
        row.artifacts = "complete" if ok else why
        rows.append(row)
    return rows


def format_status(rows: list[StageStatus]) -> str:
    header = ("STAGE", "JOB", "STATE", "ELAPSED", "NODES", "REASON", "ARTIFACTS")
    table = [header] + [
        (r.stage, r.job_id or "-", r.state or "-", r.elapsed or "-", r.nodes or "-", r.reason or "-", r.artifacts)
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in table) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(str(cell).ljust(w) for cell, w in zip(line[:-1], widths)) + "  " + str(line[-1]) for line in table
    )


def _job_logs(entry: dict[str, Any], job_id: str) -> list[Path]:
    folder = entry.get("log_folder")
    if not folder:
        return []
    job_dir = Path(folder) / job_id
    return sorted(job_dir.glob(f"{job_id}_*_log.*")) + sorted(job_dir.glob(f"{job_id}_ray_*/*.log"))


def log_files(cfg: DictConfig, stage: str | None = None) -> dict[str, list[Path]]:
    """Stage -> its job's submitit log files (all tasks), newest job of each stage."""
    entries = load_record(cfg).get("stages", {})
    found: dict[str, list[Path]] = {}
    for name in STAGE_ORDER:
        if stage and name != stage:
            continue
        entry = entries.get(name) or {}
        job_id = str(entry.get("job_id") or "")
        if not job_id or not entry.get("log_folder"):
            continue
        found[name] = _job_logs(entry, job_id)
    if stage and stage not in found:
        known = ", ".join(sorted(n for n, e in entries.items() if e.get("job_id"))) or "none"
        raise KeyError(f"no submitted job recorded for stage {stage!r} (stages with jobs: {known})")
    return found


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"(unreadable: {err})"
    return "\n".join(text[-lines:]) if lines > 0 else ""


def format_logs(files: dict[str, list[Path]], lines: int = 20) -> str:
    out = []
    for stage, paths in files.items():
        out.append(f"== {stage} ==")
        if not paths:
            out.append("(no log files yet: the job has not started)")
        for path in paths:
            out.append(f"--- {path}")
            body = tail(path, lines)
            if body:
                out.append(body)
    return "\n".join(out)
