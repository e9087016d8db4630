"""Slurm job state, read in one place: `sacct` (accounting), `squeue` (the live queue), `scontrol` (a live job's
reason and dependency).

One vocabulary: Slurm's own long state names (`COMPLETED`, `CANCELLED`, `OUT_OF_MEMORY`, ...), normalised once
here by `normalise_state`: sacct writes who cancelled ("CANCELLED by 1000"), truncated columns end in "+", and
scontrol writes "JobState=...". Placeholders Slurm prints for "no value" ("None", "Unknown", "None assigned")
become "". Every caller (chain, status, demo, sweep, the command line) asks `is_final` / `is_active` /
`FAILED_STATES` instead of keeping its own list. submitit's own job state is not used: it re-reads sacct at most
every 10 minutes per job and knows only State and NodeList, while status needs reason, times and dependencies.

Only the standard library is imported (login nodes).
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

PENDING = "PENDING"
# A job in one of these will not change any more (a requeued job shows REQUEUED/PENDING, not these).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
    }
)
FAILED_STATES = FINAL_STATES - {"COMPLETED"}
# Queued, starting, running, ending or held: slurmctld still acts on the job.
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "STAGE_OUT",
        "SIGNALING",
        "SUSPENDED",
        "STOPPED",
        "RESIZING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
NO_VALUE = ("None", "Unknown", "None assigned", "(null)")
SACCT_FIELDS = ("JobIDRaw", "State", "ExitCode", "Reason", "Elapsed", "Submit", "Start", "End", "NodeList")


def normalise_state(raw: str | None) -> str:
    """'CANCELLED by 1000' -> 'CANCELLED', 'RUNNING+' -> 'RUNNING', 'JobState=PENDING' -> 'PENDING', '' -> ''."""
    words = (raw or "").strip().split()
    if not words:
        return ""
    return words[0].rpartition("=")[2].rstrip("+").upper()


def is_final(state: str) -> bool:
    return normalise_state(state) in FINAL_STATES


def is_active(state: str) -> bool:
    return normalise_state(state) in ACTIVE_STATES


def _value(text: str) -> str:
    text = text.strip()
    return "" if text in NO_VALUE else text


@dataclass(frozen=True)
class SacctRecord:
    """A job's allocation line in accounting; `state` normalised, "no value" placeholders as ""."""

    job_id: str
    state: str
    exit_code: str = ""
    reason: str = ""
    elapsed: str = ""
    submit: str = ""
    start: str = ""
    end: str = ""
    node_list: str = ""
    requeues: int = 0  # earlier runs of the job that ended REQUEUED (a time limit's save-and-requeue, a preemption)

    @property
    def started(self) -> bool:
        return bool(self.start)


def parse_sacct(text: str) -> dict[str, SacctRecord]:
    """`sacct -X -D -P -n -o <SACCT_FIELDS>` output -> job id -> record of its latest run (the latest Submit: a
    requeue submits the job again). With -D (duplicates) a requeued job has one line per run; the earlier ones that
    ended REQUEUED are counted in `requeues`."""
    runs: dict[str, list[SacctRecord]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        values = {field: _value(text) for field, text in zip(SACCT_FIELDS, line.split("|"))}
        job_id = values.get("JobIDRaw", "")
        runs.setdefault(job_id, []).append(
            SacctRecord(
                job_id,
                normalise_state(values.get("State")),
                exit_code=values.get("ExitCode", ""),
                reason=values.get("Reason", ""),
                elapsed=values.get("Elapsed", ""),
                submit=values.get("Submit", ""),
                start=values.get("Start", ""),
                end=values.get("End", ""),
                node_list=values.get("NodeList", ""),
            )
        )
    records = {}
    for job_id, job_runs in runs.items():
        job_runs.sort(key=lambda run: run.submit)  # stable: sacct's order among equal times
        *earlier, latest = job_runs
        records[job_id] = dataclasses.replace(latest, requeues=sum(run.state == "REQUEUED" for run in earlier))
    return records


def sacct_records(job_ids: Iterable[str]) -> dict[str, SacctRecord]:
    """One record per job known to accounting, its latest run (a job submitted a moment ago may not be there yet)."""
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return {}
    out = subprocess.run(
        ["sacct", "-X", "-D", "-P", "-n", "-j", ",".join(ids), "-o", ",".join(SACCT_FIELDS)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"sacct failed ({out.stderr.strip()}); is accounting (slurmdbd) running?")
    return parse_sacct(out.stdout)


def parse_squeue(text: str) -> dict[str, str]:
    """`squeue -h -o %i|%T` output -> job id -> normalised state."""
    states = {}
    for line in text.splitlines():
        job_id, sep, state = line.partition("|")
        if sep:
            states[job_id.strip()] = normalise_state(state)
    return states


def squeue_states(job_ids: Iterable[str] = (), name: str | None = None) -> dict[str, str]:
    """States of the jobs slurmctld still holds, by id or by job name: active ones, and ended ones for MinJobAge
    (squeue shows a COMPLETED or FAILED job for a few minutes; filter with `is_active`)."""
    ids = [str(j) for j in job_ids if j]
    if not ids and name is None:
        return {}
    cmd = ["squeue", "-h", "-o", "%i|%T"] + (["-j", ",".join(ids)] if ids else []) + (["--name", name] if name else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    return parse_squeue(out.stdout)  # an id slurmctld forgot makes squeue fail: no state, as for a purged job


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o ID` output -> its Key=Value fields; JobState normalised."""
    fields = dict(item.split("=", 1) for item in text.split() if "=" in item)
    if "JobState" in fields:
        fields["JobState"] = normalise_state(fields["JobState"])
    return fields


def live_job(job_id: str) -> dict[str, str]:
    """scontrol's fields of a job while slurmctld still holds it (until MinJobAge after it ends), else {}."""
    out = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    return parse_scontrol(out.stdout) if out.returncode == 0 else {}
