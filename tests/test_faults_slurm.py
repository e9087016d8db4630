"""Fault injection on the real local Slurm cluster (issue 19): every way a train job ends leaves nothing running and
loses nothing.

Faults: `kill -9` of the driver, `scontrol requeue` and USR2 of a 2-node job, a node set DOWN mid-job, a full disk
during a checkpoint write. After each: no process of the job left on any node (no Ray of the job's temp dirs, no
task, no supervisor), the next run resumes from the last complete checkpoint, and `metrics.jsonl` has every step
once. The job runs `tests.fault_stages:counting_ray_train` through the real job machinery (CheckpointableStageJob,
jobs.ray_cluster's Ray over the job's nodes, infra.signals, trainer.checkpoint, trainer.metrics) with sub-second
steps instead of GRPO's minutes; tests/test_full_chain_slurm.py requeues a real GRPO job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from infra.config import load_config
from jobs import chain
from jobs.stages import CheckpointableStageJob, make_executor
from tests.test_chain_slurm import release_requeued, run_overrides, sacct, wait_until
from trainer.checkpoint import latest_checkpoint, read_training_info

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def fault_job(root: Path, nodes: int = 2, with_ray: bool = True, **testing: Any):
    cfg = chain.resolve_config(load_config("tiny_cpu", run_overrides(root)), nodes=nodes)
    cfg.testing = {"with_ray": with_ray, **testing}  # for the test stage only: not a schema key
    job_def = CheckpointableStageJob(
        "train", OmegaConf.to_yaml(cfg), target="tests.fault_stages:counting_ray_train", use_ray=with_ray, grace_s=20
    )
    return make_executor(cfg, "train", nodes=nodes), job_def


def events(root: Path, kind: str | None = None) -> list[dict]:
    path = root / "train" / "events.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [row for row in rows if kind is None or row["kind"] == kind]


def metric_steps(root: Path) -> list[int]:
    path = root / "train" / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def last_complete_step(root: Path) -> int:
    latest = latest_checkpoint(root / "train" / "checkpoints")
    assert latest is not None, "no complete checkpoint"
    assert json.loads((latest / "state.json").read_text())["values"], latest  # readable, not torn
    return int(read_training_info(latest)["current_step"])


def pids_naming(text: str) -> list[int]:
    """Live (non-zombie: PID 1 here does not reap) processes whose command line contains `text`. The test's own
    (not infra.ray_start's, the code under test)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(bytes(1), b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in cmdline and state not in ("Z", "X") and int(entry) != os.getpid():
            found.append(int(entry))
    return found


def job_processes(job_id: str) -> list[str]:
    """Live (non-zombie) processes of the job on this host, i.e. on both local nodes: its Ray nodes and their
    supervisors (named by the job's Ray temp dirs), its tasks (named by its log folder), its step daemons."""
    pids = set(pids_naming(f"/tmp/ray-j{job_id}-")) | set(pids_naming(f"/logs/train/{job_id}/"))
    pids |= set(pids_naming(f"slurmstepd: [{job_id}."))
    found = []
    for pid in sorted(pids):
        try:
            found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ')[:200]!r}")
        except OSError:
            pass
    return found


def assert_nothing_left(job_id: str) -> None:
    left: list[str] = []

    def gone() -> bool:
        left[:] = job_processes(job_id)
        return not left

    try:
        wait_until(gone, 90, f"job {job_id}'s processes to end")
    except AssertionError:
        raise AssertionError(f"processes of job {job_id} outlived it:\n" + "\n".join(left)) from None


def job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or sacct([job_id]).get(job_id, {}).get("State", "") or "UNKNOWN"


def finish(root: Path, job, count: int) -> None:
    # accounting first: submitit takes an earlier run's NODE_FAIL for the job's end and would not wait
    wait_until(lambda: job_state(job.job_id) in ("COMPLETED", "FAILED", "CANCELLED"), 300, "the job to end")
    job.results()  # every task's result: raises if the job did not complete
    assert metric_steps(root) == list(range(1, count + 1)), metric_steps(root)  # no gap, no step twice
    assert_nothing_left(job.job_id)


FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "NODE_FAIL", "TIMEOUT", "OUT_OF_MEMORY")


def wait_for_job(job, predicate, timeout: float, what: str):
    """wait_until, failing at once (with the task's error) when a task raised or the job ended before `what`."""

    def check():
        value = predicate()
        if value:
            return value
        for log in Path(job.paths.folder).glob(f"{job.job_id}_*_log.out"):
            text = log.read_text(errors="replace")
            if "Submitted job triggered an exception" in text:
                raise AssertionError(f"a task of job {job.job_id} failed before {what}:\n{text[-3000:]}")
        state = job_state(job.job_id)
        if state.split()[0] in FINAL_STATES:
            raise AssertionError(f"job {job.job_id} ended ({state}) before {what}")
        return value

    return wait_until(check, timeout, what)


def needs_two_nodes(local_cluster) -> None:
    if int(local_cluster["nodes"]) < 2:
        pytest.skip("needs NODES>=2")


def task_pid(job_id: str, rank: int) -> int:
    """The pid of the job's task `rank` (submitit's Python, found by its Slurm environment)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"submitit.core._submit" not in Path(f"/proc/{entry}/cmdline").read_bytes():
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(bytes(1))
        except OSError:
            continue
        if f"SLURM_JOB_ID={job_id}".encode() in environ and f"SLURM_PROCID={rank}".encode() in environ:
            return int(entry)
    raise AssertionError(f"no task {rank} of job {job_id} found")


def test_kill_9_of_the_driver_or_a_worker_task_leaves_no_ray_running_and_the_next_job_resumes(local_cluster, tmp_path):
    """Issue 19 (1): `kill -9` of the job's Python left `ray start`, gcs_server, raylet and the agents running.
    The driver (rank 0) is killed in a first job, the worker task (rank 1) in the job that resumes from it, and a
    third job finishes the run."""
    needs_two_nodes(local_cluster)
    root, count = tmp_path / "run", 16
    resumes = []
    for rank in (0, 1):
        executor, job_def = fault_job(root, count=count, step_s=0.4, save_period=3)
        job = executor.submit(job_def)
        first_save = (resumes[-1] if resumes else 0) + 3  # the first checkpoint this job writes
        wait_for_job(
            job,
            lambda n=first_save: [e for e in events(root, "save") if e["step"] >= n],
            300,
            f"checkpoint {first_save}",
        )
        wait_for_job(job, lambda n=first_save: len(metric_steps(root)) > n, 60, "a step after it")
        assert job_processes(job.job_id)  # the check below sees the job's processes while it runs
        os.kill(task_pid(job.job_id, rank), signal.SIGKILL)
        ended = lambda j=job.job_id: job_state(j) not in ("UNKNOWN", "RUNNING", "COMPLETING")  # noqa: E731
        wait_until(ended, 120, "the job to end")
        assert_nothing_left(job.job_id)
        resumes.append(last_complete_step(root))

    executor, job_def = fault_job(root, count=count, step_s=0.4, save_period=3)
    last = executor.submit(job_def)
    finish(root, last, count)
    assert [e["step"] for e in events(root, "start")] == [0, *resumes], events(root)


def test_requeue_and_usr2_of_a_two_node_job_save_and_resume(local_cluster, tmp_path):
    """Issue 19 (2): `scontrol requeue` SIGTERMed rank 1's Ray, its task failed the step and rank 0 was aborted
    before it saved. Now the head saves on SIGTERM (requeue) and on SIGUSR2 (time-limit warning); the workers
    wait for it; each restart resumes from that save."""
    needs_two_nodes(local_cluster)
    root, count = tmp_path / "run", 16
    executor, job_def = fault_job(root, count=count, step_s=0.4, save_period=0)  # only the saves on a signal
    job = executor.submit(job_def)
    wait_for_job(job, lambda: len(metric_steps(root)) >= 3, 300, "step 3")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    release_requeued(job.job_id)
    wait_for_job(job, lambda: any(e["restart"] == "1" for e in events(root, "start")), 300, "the restarted job")
    first = events(root, "save")
    assert [e["reason"] for e in first] == ["SIGTERM"], events(root)
    assert events(root, "start")[1]["step"] == first[0]["step"] >= 3, events(root)

    wait_for_job(job, lambda: len(metric_steps(root)) >= first[0]["step"] + 2, 120, "two steps after the restart")
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)  # what --signal=USR2@N does
    wait_for_job(job, lambda: len(events(root, "save")) == 2, 120, "the save on USR2")
    release_requeued(job.job_id)
    finish(root, job, count)
    saves, starts = events(root, "save"), events(root, "start")
    assert [e["reason"] for e in saves[:2]] == ["SIGTERM", "SIGUSR2"], saves
    assert [e["step"] for e in starts] == [0, saves[0]["step"], saves[1]["step"]], starts
    rank1_log = Path(str(job.paths.stdout).replace("_0_log.out", "_1_log.out")).read_text()
    assert "exited with" not in rank1_log and "left the Ray cluster" in rank1_log, rank1_log[-3000:]


def bring_back(node: str) -> None:
    """RESUME the node if it is still DOWN (ReturnToService=2 may already have brought it back); wait until it is."""

    def state() -> str:
        out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout
        return out.strip().lower()

    if "down" in state() or "drain" in state():
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
    wait_until(lambda: "down" not in state() and "drain" not in state(), 60, f"{node} to be back")


def test_a_node_down_mid_job_leaves_nothing_and_the_job_resumes(local_cluster, tmp_path):
    needs_two_nodes(local_cluster)
    root, count = tmp_path / "run", 14
    executor, job_def = fault_job(root, count=count, step_s=0.4, save_period=3)
    job = executor.submit(job_def)
    wait_for_job(job, lambda: [e for e in events(root, "save") if e["step"] >= 3], 300, "a checkpoint at step 3")
    down = ["scontrol", "update", "nodename=node2", "state=down", "reason=fault-injection-test"]
    subprocess.run(down, check=True)
    try:
        # NODE_FAIL: Slurm requeues the job (PENDING, held for BeginTime) or, where it may not, ends it
        settled = ("PENDING", "FAILED", "CANCELLED", "NODE_FAIL", "COMPLETED")
        wait_until(lambda: job_state(job.job_id).split()[0] in settled, 120, "the job to stop on node2's loss")
        assert_nothing_left(job.job_id)
        resume_from = last_complete_step(root)
    finally:
        bring_back("node2")
    if job_state(job.job_id) == "PENDING":  # requeued by Slurm (node failure)
        release_requeued(job.job_id)
    else:
        executor, job_def = fault_job(root, count=count, step_s=0.4, save_period=3)
        job = executor.submit(job_def)
    finish(root, job, count)
    assert events(root, "start")[-1]["step"] == resume_from, events(root)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (root may mount one; skip with the reason where not)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_complete_checkpoint(local_cluster, tmp_path, small_disk):
    """Checkpoints of ~300 KB on a disk with room for two and part of a third (keep_top_k=2: the third is written
    before the oldest goes): the third write fails with ENOSPC, the job fails, the last complete checkpoint stays
    loadable and the next job resumes from it."""
    root, count = tmp_path / "run", 10
    (root / "train").mkdir(parents=True)
    (root / "train" / "checkpoints").symlink_to(small_disk)  # only the checkpoints on the small disk
    stats = os.statvfs(small_disk)
    filler = small_disk / "filler"
    filler.write_bytes(bytes(stats.f_bavail * stats.f_frsize - 750 * 1024))
    settings = dict(nodes=1, with_ray=False, count=count, step_s=0.3, save_period=2, state_bytes=300_000)
    executor, job_def = fault_job(root, **settings)
    job = executor.submit(job_def)
    wait_until(
        lambda: job_state(job.job_id) not in ("UNKNOWN", "PENDING", "RUNNING", "COMPLETING"), 300, "the job to end"
    )
    assert sacct([job.job_id])[job.job_id]["State"] == "FAILED"
    assert "No space left on device" in Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    assert_nothing_left(job.job_id)
    assert [e["step"] for e in events(root, "save")] == [2, 4], events(root)
    assert last_complete_step(root) == 4
    assert metric_steps(root) == [1, 2, 3, 4, 5], metric_steps(root)  # step 6 failed in its save
    filler.unlink()

    executor, job_def = fault_job(root, **settings)
    again = executor.submit(job_def)
    finish(root, again, count)
    assert events(root, "start")[-1]["step"] == 4, events(root)
    assert not list(small_disk.glob("tmp_step_*")), list(small_disk.iterdir())  # the torn write was cleaned
