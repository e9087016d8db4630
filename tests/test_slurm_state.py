"""jobs.slurm_state: one state vocabulary (Slurm's names, normalised once) over sacct, squeue and scontrol output.

The samples are the commands' outputs as jobs.slurm_state asks for them (sacct -X -P -n -o ..., squeue -h -o
'%i|%T', scontrol show job -o), in the forms Slurm 22.05 prints: who cancelled, placeholders for no value, a
dependency that can never be satisfied. The slurm-marked tests read the same commands on the local cluster."""

from __future__ import annotations

import pytest

from jobs import chain, slurm_state, status

SACCT = """\
41|COMPLETED|0:0|None|00:00:12|2024-05-02T10:00:01|2024-05-02T10:00:02|2024-05-02T10:00:14|node1
42|FAILED|1:0|None|00:00:03|2024-05-02T10:00:01|2024-05-02T10:00:15|2024-05-02T10:00:18|node1
43|CANCELLED by 1000|0:0|DependencyNeverSatisfied|00:00:00|2024-05-02T10:00:01|None|2024-05-02T10:00:18|None assigned
44|PENDING|0:0|Dependency|00:00:00|2024-05-02T10:00:30|Unknown|Unknown|None assigned
45|RUNNING|0:0|None|00:01:05|2024-05-02T10:00:31|2024-05-02T10:00:32|Unknown|node[1-2]
46|OUT_OF_MEMORY|0:125|None|00:00:40|2024-05-02T10:00:31|2024-05-02T10:00:32|2024-05-02T10:01:12|node2
"""
SQUEUE = "44|PENDING\n45|RUNNING\n41|COMPLETED\n47|COMPLETING\n48|REQUEUE_HOLD\n"
SCONTROL = (
    "JobId=43 JobName=run-sanity UserId=me(1000) GroupId=me(1000) MCS_label=N/A Priority=1 Nice=0 "
    "Account=(null) QOS=(null) JobState=CANCELLED Reason=DependencyNeverSatisfied "
    "Dependency=afterok:42(failed) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:0 RunTime=00:00:00\n"
)


@pytest.mark.parametrize(
    "raw, state",
    [
        ("CANCELLED by 1000", "CANCELLED"),
        ("RUNNING+", "RUNNING"),
        ("JobState=PENDING", "PENDING"),
        ("  completed ", "COMPLETED"),
        ("", ""),
        (None, ""),
    ],
)
def test_normalise_state(raw, state):
    assert slurm_state.normalise_state(raw) == state


def test_every_state_is_either_final_or_active_never_both():
    assert not slurm_state.FINAL_STATES & slurm_state.ACTIVE_STATES
    assert slurm_state.is_final("CANCELLED by 1000") and not slurm_state.is_active("CANCELLED by 1000")
    assert slurm_state.is_active("REQUEUED") and not slurm_state.is_final("REQUEUED")  # requeue: not over
    assert "COMPLETED" not in slurm_state.FAILED_STATES and "OUT_OF_MEMORY" in slurm_state.FAILED_STATES


def test_parse_sacct_normalises_states_and_placeholders():
    records = slurm_state.parse_sacct(SACCT)
    assert sorted(records) == ["41", "42", "43", "44", "45", "46"]
    assert {j: r.state for j, r in records.items()} == {
        "41": "COMPLETED",
        "42": "FAILED",
        "43": "CANCELLED",
        "44": "PENDING",
        "45": "RUNNING",
        "46": "OUT_OF_MEMORY",
    }
    cancelled, running = records["43"], records["45"]
    assert (cancelled.start, cancelled.node_list, cancelled.started) == ("", "", False)
    assert cancelled.reason == "DependencyNeverSatisfied" and records["41"].reason == ""
    assert (running.node_list, running.elapsed, running.end, running.started) == ("node[1-2]", "00:01:05", "", True)
    assert records["46"].exit_code == "0:125" and records["44"].submit == "2024-05-02T10:00:30"


def test_parse_squeue_and_scontrol():
    assert slurm_state.parse_squeue(SQUEUE) == {
        "44": "PENDING",
        "45": "RUNNING",
        "41": "COMPLETED",
        "47": "COMPLETING",
        "48": "REQUEUE_HOLD",
    }
    fields = slurm_state.parse_scontrol(SCONTROL)
    assert fields["JobState"] == "CANCELLED" and fields["Reason"] == "DependencyNeverSatisfied"
    assert fields["Dependency"] == "afterok:42(failed)"


def test_chain_reuses_only_active_jobs(monkeypatch):
    """squeue keeps listing a finished job for MinJobAge: a COMPLETED or FAILED one must not count as running."""
    monkeypatch.setattr(slurm_state, "squeue_states", lambda ids: slurm_state.parse_squeue(SQUEUE))
    assert chain.active_jobs(["41", "44", "45", "47", "48"]) == {
        "44": "PENDING",
        "45": "RUNNING",
        "47": "COMPLETING",
        "48": "REQUEUE_HOLD",
    }


def test_status_reason_of_a_job_cancelled_for_its_failed_parent(monkeypatch):
    """After MinJobAge scontrol no longer knows the job: the reason comes from the parent's sacct state."""
    monkeypatch.setattr(slurm_state, "live_job", lambda job_id: {})
    records = slurm_state.parse_sacct(SACCT)
    states = {j: r.state for j, r in records.items()}
    entry = {"dependency": "afterok:42"}
    assert status._reason("43", records["43"], entry, states) == "DependencyNeverSatisfied: afterok parent 42 FAILED"
    assert status._reason("41", records["41"], {}, states) == ""
    assert status._reason("44", records["44"], {}, states) == "Dependency"
    monkeypatch.setattr(slurm_state, "live_job", lambda job_id: slurm_state.parse_scontrol(SCONTROL))
    assert status._reason("43", records["43"], {"dependency": ""}, states) == "DependencyNeverSatisfied"


def test_status_names_the_last_exception_of_a_failed_jobs_log(tmp_path):
    from jobs.status import last_error_line

    err = tmp_path / "7_0_log.err"
    err.write_text(
        "submitit ERROR (2026-12-02 12:00:00,000) - Submitted job triggered an exception\n"
        "Traceback (most recent call last):\n"
        '  File "pipeline/prepare.py", line 40, in run\n'
        "    raise ValueError(msg)\n"
        "ValueError: data/train.jsonl:3: ground truth call 0: unknown tool 'no_such_tool'\n"
        "srun: error: node1: task 0: Exited with exit code 1\n"
    )
    out = tmp_path / "7_0_log.out"
    out.write_text("[prepare] start\nsubmitit.core.utils.UncompletedJobError: Job 7 (task: 0) failed\n")
    assert (
        last_error_line([err, out])
        == "ValueError: data/train.jsonl:3: ground truth call 0: unknown tool 'no_such_tool'"
    )
    assert last_error_line([out]) == ""  # submitit's wrapper alone says nothing the user can act on
    assert last_error_line([tmp_path / "missing.err"]) == ""


# `sacct -X -D -P -n -o <SACCT_FIELDS>` of a train job on the local cluster (Slurm 22.05) that saved and requeued
# itself on its first USR2 and was given up by submitit on the second (slurm.max_num_timeout=1): one line per run
SACCT_TIMED_OUT = """\
85|REQUEUED|0:0|None|00:00:03|2026-12-02T13:30:11|2026-12-02T13:30:11|2026-12-02T13:30:14|node1
85|FAILED|1:0|None|00:00:06|2026-12-02T13:30:14|2026-12-02T13:30:18|2026-12-02T13:30:24|node1
"""
# the end of that job's stdout log (the log is appended to across requeues)
LOG_TIMED_OUT = """\
submitit WARNING (2026-12-02 13:30:14,148) - Caught signal SIGUSR2 on vm: this job is timed-out.
submitit INFO (2026-12-02 13:30:14,163) - Requeued job 85 (0 remaining timeouts)
[train] start tests.chain_stages:counting_train on node1 job 85 restart 1
[train] stopped after SIGUSR2; requeueing
submitit WARNING (2026-12-02 13:30:24,125) - Caught signal SIGUSR2 on vm: this job is timed-out.
submitit INFO (2026-12-02 13:30:24,126) - Job not requeued because: timed-out too many times.
submitit ERROR (2026-12-02 13:30:24,128) - Submitted job triggered an exception
"""
GAVE_UP = "submitit INFO (2026-12-02 13:30:24,126) - Job not requeued because: timed-out too many times.\n"


def test_parse_sacct_keeps_a_requeued_jobs_latest_run_and_counts_its_requeues():
    records = slurm_state.parse_sacct(SACCT_TIMED_OUT)
    assert list(records) == ["85"]
    assert (records["85"].state, records["85"].requeues, records["85"].start) == ("FAILED", 1, "2026-12-02T13:30:18")
    assert slurm_state.parse_sacct(SACCT)["42"].requeues == 0
    newest_first = "\n".join(reversed(SACCT_TIMED_OUT.splitlines()))  # the latest run is the latest Submit
    assert slurm_state.parse_sacct(newest_first) == records


def _status_of_train(monkeypatch, tmp_path, sacct_text: str, log_text: str, job_id: str = "85") -> str:
    from infra.config import load_config

    cfg = chain.resolve_config(load_config("tiny_cpu", [f"run.root={tmp_path}"]))
    log_dir = tmp_path / "logs" / "train"
    (log_dir / job_id).mkdir(parents=True)
    (log_dir / job_id / f"{job_id}_0_log.out").write_text(log_text)
    chain.save_record(cfg, {"executor": "slurm", "stages": {"train": {"job_id": job_id, "log_folder": str(log_dir)}}})
    monkeypatch.setattr(status, "slurm_available", lambda: True)
    monkeypatch.setattr(slurm_state, "sacct_records", lambda ids: slurm_state.parse_sacct(sacct_text))
    monkeypatch.setattr(slurm_state, "live_job", lambda job_id: {"Reason": "NonZeroExitCode"})
    (row,) = status.collect_status(cfg)
    return row.reason


def test_status_says_a_stage_gave_up_after_time_limit_requeues(monkeypatch, tmp_path):
    assert _status_of_train(monkeypatch, tmp_path, SACCT_TIMED_OUT, LOG_TIMED_OUT) == "timed out 2 times: make resume"


def test_status_says_a_stage_slurm_killed_at_its_time_limit_timed_out(monkeypatch, tmp_path):
    # the same job had it not stopped within the signal delay: Slurm ends the run at the limit (TIMEOUT)
    sacct = SACCT_TIMED_OUT.replace("|FAILED|1:0|", "|TIMEOUT|0:0|")
    assert _status_of_train(monkeypatch, tmp_path, sacct, "[train] start\n") == "timed out 2 times: make resume"


def test_status_keeps_the_error_of_a_requeued_stage_that_failed_otherwise(monkeypatch, tmp_path):
    log = LOG_TIMED_OUT.replace(GAVE_UP, "") + "RuntimeError: ray worker on rank 1 exited with 1\n"
    reason = _status_of_train(monkeypatch, tmp_path, SACCT_TIMED_OUT, log)
    assert reason == "NonZeroExitCode: RuntimeError: ray worker on rank 1 exited with 1"
