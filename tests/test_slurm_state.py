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
