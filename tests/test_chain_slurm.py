"""The submitit job chain on the real local Slurm cluster: order, skipping, failure propagation, requeue,
preemption, and a 2-node job with a Ray cluster. No fake sbatch/sacct anywhere."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from infra.config import load_config
from jobs import chain
from jobs.stages import CheckpointableStageJob, make_executor, make_job

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ROWS = REPO_ROOT / "tests" / "data" / "example_rows.jsonl"
# small jobs: one CPU each, so both fake nodes can run one at a time each
SMALL = ["slurm.cpus_per_task=1", "slurm.mem_gb=1", "slurm.time_min=10"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    fields = ["JobIDRaw", "State", "Start", "End", "NodeList"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "-o", ",".join(fields)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line.split("|")[0]: dict(zip(fields, line.split("|"))) for line in out.splitlines() if line}


def wait_until(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_overrides(root: Path, *extra: str) -> list[str]:
    return [f"run.root={root}", "data.source=local", *SMALL, *extra]


def record(root: Path) -> dict:
    return json.loads((root / "jobs.json").read_text())


def test_local_executor_runs_the_chain_without_slurm(tmp_path):
    root = tmp_path / "run"
    result = cli(
        "submit",
        "--until",
        "prepare",
        *run_overrides(root, "slurm.use_cluster=false", f"+data.local.jsonl={EXAMPLE_ROWS}"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "LocalExecutor" in result.stdout
    assert (root / "prepare" / "train_prepare.jsonl").exists()
    assert record(root)["executor"] == "local"


# --- real Slurm ------------------------------------------------------------------------------------------------


@pytest.mark.slurm
def test_data_then_prepare_complete_in_order_and_are_skipped_next_time(local_cluster, tmp_path):
    root = tmp_path / "run"
    overrides = run_overrides(root, "data.local.generator_rows=60")
    first = cli("submit", "--until", "prepare", "--wait", *overrides)
    assert first.returncode == 0, first.stdout + first.stderr
    stages = record(root)["stages"]
    data_id, prepare_id = stages["data"]["job_id"], stages["prepare"]["job_id"]
    assert stages["prepare"]["dependency"] == f"afterok:{data_id}"
    acct = sacct([data_id, prepare_id])
    assert acct[data_id]["State"] == "COMPLETED" and acct[prepare_id]["State"] == "COMPLETED"
    assert acct[prepare_id]["Start"] >= acct[data_id]["End"]  # ISO timestamps compare in time order
    train_rows = (root / "prepare" / "train_prepare.jsonl").read_text().splitlines()
    assert len(train_rows) == 54 and json.loads(train_rows[0])["agent_ref"]["type"] == "responses_api_agents"

    status = cli("status", *overrides)
    lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.split()}
    assert "COMPLETED" in lines["data"] and "complete" in lines["prepare"], status.stdout

    again = cli("submit", "--until", "prepare", *overrides)
    assert again.returncode == 0
    assert again.stdout.count("skipped") == 2 and "submitted" not in again.stdout, again.stdout
    assert record(root)["stages"]["prepare"]["job_id"] == prepare_id


@pytest.mark.slurm
def test_failed_stage_cancels_its_dependants_and_status_says_why(local_cluster, tmp_path):
    rows = [json.loads(line) for line in EXAMPLE_ROWS.read_text().splitlines()]
    rows[2]["ground_truth"][0]["name"] = "no_such_tool"
    bad_file = tmp_path / "bad_rows.jsonl"
    bad_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    root = tmp_path / "run"
    overrides = run_overrides(root, f"+data.local.jsonl={bad_file}")
    result = cli("submit", "--until", "sanity", "--wait", *overrides)
    assert result.returncode == 1, result.stdout + result.stderr
    stages = record(root)["stages"]
    acct = sacct([stages[s]["job_id"] for s in ("data", "prepare", "sanity")])
    assert acct[stages["data"]["job_id"]]["State"] == "COMPLETED"
    assert acct[stages["prepare"]["job_id"]]["State"] == "FAILED"
    assert acct[stages["sanity"]["job_id"]]["State"].startswith("CANCELLED")

    status = cli("status", *overrides).stdout
    sanity_line = next(line for line in status.splitlines() if line.startswith("sanity"))
    assert "DependencyNeverSatisfied" in sanity_line and stages["prepare"]["job_id"] in sanity_line, status
    prepare_line = next(line for line in status.splitlines() if line.startswith("prepare"))
    assert "unknown tool 'no_such_tool'" in prepare_line, status  # the reason, not only NonZeroExitCode
    logs = cli("logs", "--stage", "prepare", "--lines", "60", *overrides).stdout
    assert ".jsonl:" in logs and "unknown tool 'no_such_tool'" in logs, logs


def counter_job(root: Path, count: int, step_s: float) -> tuple[object, CheckpointableStageJob]:
    cfg = chain.resolve_config(load_config("tiny_cpu", run_overrides(root)))
    cfg.testing = {"count": count, "step_s": step_s}  # for the test stage only: not a schema key, so added here
    job_def = CheckpointableStageJob(
        "train", OmegaConf.to_yaml(cfg), target="tests.chain_stages:counting_train", grace_s=20
    )
    return make_executor(cfg, "train"), job_def


def counter_state(root: Path) -> dict:
    path = root / "train" / "counter_state.json"
    return json.loads(path.read_text()) if path.exists() else {"i": 0, "starts": [], "saves": []}


def release_requeued(job_id: str) -> None:
    """A requeued job waits ~120 s (BeginTime); start it now, once the previous run is fully gone."""

    def pending() -> bool:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        return out.strip() == "PENDING"

    def old_run_gone() -> bool:
        found = subprocess.run(["pgrep", "-f", rf"slurmstepd: \[{job_id}\."], capture_output=True, text=True)
        return found.stdout.strip() == ""

    wait_until(pending, 60, f"job {job_id} to be requeued")
    wait_until(old_run_gone, 60, f"the first run of job {job_id} to be torn down")
    # slurmd revokes the old run's credential with 1 s resolution: a relaunch within the same second is refused
    # ("Job credential revoked") and the job FAILS -- the reason Slurm holds requeued jobs back ~120 s
    time.sleep(3)
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True)


@pytest.mark.slurm
@pytest.mark.slow
def test_scontrol_requeue_resumes_from_the_on_disk_checkpoint(local_cluster, tmp_path):
    root = tmp_path / "run"
    executor, job_def = counter_job(root, count=24, step_s=0.5)
    job = executor.submit(job_def)
    wait_until(lambda: counter_state(root)["i"] >= 6, 120, "the counter to reach 6")
    subprocess.run(["scontrol", "requeue", job.job_id], check=True)
    release_requeued(job.job_id)
    job.result()  # raises if the job did not complete
    state = counter_state(root)
    assert state["i"] == 24
    assert [s["restart"] for s in state["starts"]] == ["0", "1"], state
    assert state["starts"][1]["from"] >= 6, state  # resumed, did not start over
    wait_until(lambda: sacct([job.job_id])[job.job_id]["State"] == "COMPLETED", 60, "sacct to say COMPLETED")


@pytest.mark.slurm
@pytest.mark.slow
def test_usr2_asks_the_stage_to_save_then_requeues(local_cluster, tmp_path):
    root = tmp_path / "run"
    executor, job_def = counter_job(root, count=24, step_s=0.5)
    job = executor.submit(job_def)
    wait_until(lambda: counter_state(root)["i"] >= 4, 120, "the counter to reach 4")
    job._interrupt(timeout=True)  # submitit's test hook: `scancel --signal USR2` (the time-limit warning)
    release_requeued(job.job_id)
    job.result()
    wait_until(lambda: sacct([job.job_id])[job.job_id]["State"] == "COMPLETED", 60, "sacct to say COMPLETED")
    state = counter_state(root)
    assert state["i"] == 24
    assert state["saves"] and state["saves"][0]["reason"] == "SIGUSR2", state
    assert state["starts"][1]["from"] == state["saves"][0]["at"], state
    log = Path(job.paths.stdout).read_text()
    assert "requeueing" in log


@pytest.mark.slurm
@pytest.mark.slow
def test_status_says_a_train_job_that_ran_out_of_time_limit_requeues_timed_out(local_cluster, tmp_path):
    from jobs import status
    from jobs.stages import log_folder

    root = tmp_path / "run"
    cfg = chain.resolve_config(load_config("tiny_cpu", run_overrides(root, "slurm.max_num_timeout=1")))
    cfg.testing = {"count": 400, "step_s": 0.5}
    job_def = CheckpointableStageJob("train", OmegaConf.to_yaml(cfg), target="tests.chain_stages:counting_train")
    job = make_executor(cfg, "train").submit(job_def)
    chain.save_record(  # as submit_chain records it
        cfg,
        {"executor": "slurm", "stages": {"train": {"job_id": job.job_id, "log_folder": str(log_folder(cfg, "train"))}}},
    )

    def counting_in_run(run: int) -> bool:
        state = counter_state(root)
        return len(state["starts"]) == run + 1 and state["i"] > state["starts"][-1]["from"]

    for run in range(2):  # the time-limit warning twice: the first is saved and requeued, the second given up
        wait_until(functools.partial(counting_in_run, run), 120, f"run {run + 1} to count")
        job._interrupt(timeout=True)  # `scancel --signal USR2`; a 10-minute job is past submitit's timed-out mark
        if run == 0:
            release_requeued(job.job_id)
    wait_until(lambda: sacct([job.job_id])[job.job_id]["State"] == "FAILED", 120, "sacct to say FAILED")
    (row,) = status.collect_status(cfg)
    assert (row.state, row.reason) == ("FAILED", "timed out 2 times: make resume"), row


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_job_gets_two_ranks_and_a_two_node_ray_cluster(local_cluster, tmp_path):
    if int(local_cluster["nodes"]) < 2:
        pytest.skip("needs NODES>=2")
    root = tmp_path / "run"
    cfg = chain.resolve_config(load_config("tiny_cpu", run_overrides(root)), nodes=2)
    job = make_executor(cfg, "train", nodes=2).submit(make_job("train", cfg, "tests.chain_stages:ray_nodes"))
    results = job.results()  # one per task
    assert results[0] == str(root / "train") and results[1] is None
    info = json.loads((root / "train" / "ray_nodes.json").read_text())
    assert info["alive_nodes"] == 2 and len(info["task_nodes"]) == 2, info
    assert len(set(info["node_manager_ports"])) == 2
    assert sacct([job.job_id])[job.job_id]["NodeList"] == "node[1-2]"
    rendezvous = Path(job.paths.folder) / f"{job.job_id}_ray_0"
    assert (rendezvous / "head.log").exists() and (rendezvous / "worker-1.log").exists()
    assert (rendezvous / "auth_token").stat().st_mode & 0o777 == 0o600  # the job's own Ray token
    rank1_log = Path(str(job.paths.stdout).replace("_0_log.out", "_1_log.out")).read_text()
    assert "rank 1 on node2 joining" in rank1_log and "left the Ray cluster" in rank1_log
    leftovers = subprocess.run(["pgrep", "-f", f"ray-j{job.job_id}-"], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", "Ray processes of the job outlived it"


def test_plan_skips_up_to_date_stages_and_reruns_everything_after_a_change(tmp_path):
    from bench.chain_bench import noop_sanity
    from pipeline import data, prepare

    overrides = run_overrides(tmp_path / "run", f"+data.local.jsonl={EXAMPLE_ROWS}", "slurm.use_cluster=false")
    cfg = chain.resolve_config(load_config("tiny_cpu", overrides))
    data.run(cfg), prepare.run(cfg), noop_sanity(cfg)
    actions = lambda plans: [(p.stage, p.action) for p in plans]  # noqa: E731
    assert actions(chain.plan_chain(cfg, "train", use_cluster=False)) == [
        ("data", "skip"),
        ("prepare", "skip"),
        ("sanity", "skip"),
        ("train", "submit"),
    ]
    assert actions(chain.plan_chain(cfg, "train", always=["train"], use_cluster=False))[-1] == ("train", "submit")
    changed = chain.resolve_config(load_config("tiny_cpu", overrides + ["prepare.drop_bad_rows=true"]))
    plans = chain.plan_chain(changed, "sanity", use_cluster=False)
    assert actions(plans) == [("data", "skip"), ("prepare", "submit"), ("sanity", "submit")]
    assert plans[1].reason.startswith("config changed") and plans[2].reason == "prepare runs again"
    # a longer GRPO run is train's alone: sanity stays done
    longer = chain.resolve_config(load_config("tiny_cpu", overrides + ["grpo.max_num_steps=7"]))
    longer_plan = actions(chain.plan_chain(longer, "train", use_cluster=False))
    assert longer_plan[2:] == [("sanity", "skip"), ("train", "submit")]
    # sanity runs again, and nothing reads its output
    more_rollouts = chain.resolve_config(load_config("tiny_cpu", overrides + ["sanity.num_rollouts=3"]))
    assert actions(chain.plan_chain(more_rollouts, "sanity", use_cluster=False)) == [
        ("data", "skip"),
        ("prepare", "skip"),
        ("sanity", "submit"),
    ]
    with_sft = chain.resolve_config(load_config("tiny_cpu", overrides + ["sft.enabled=true"]))
    assert chain.chain_stages(with_sft, "eval") == ["data", "prepare", "sanity", "sft", "train", "eval"]
    assert chain.chain_stages(cfg, "eval") == ["data", "prepare", "sanity", "train", "eval"]


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_runs_the_matrix_as_a_job_array_and_reschedules_itself(local_cluster, tmp_path):
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text("- [grpo.seed=1]\n- [grpo.seed=2]\n")
    overrides = run_overrides(tmp_path / "run", f"+data.local.jsonl={EXAMPLE_ROWS}")
    installed = cli(
        "sweep-install",
        "--every-min",
        "60",
        "--matrix",
        str(matrix),
        "--target",
        "sanity=tests.chain_stages:passing_sanity",
        *overrides,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    root = tmp_path / "tiny_cpu-sweep"

    def first_tick():
        state = json.loads((root / "sweep.json").read_text())
        return state["ticks"][0] if state.get("ticks") else None

    tick = wait_until(first_tick, 120, "the first sweep tick")
    pending = subprocess.run(
        ["squeue", "-h", "-j", tick["next_tick"], "-o", "%T|%r"], capture_output=True, text=True
    ).stdout.strip()
    assert pending == "PENDING|BeginTime", pending  # the next tick waits for its --begin time

    reports = [root / f"variant_{i}" / "sanity" / "report.json" for i in range(2)]
    wait_until(lambda: all(p.exists() for p in reports), 180, "both sanity variants")
    runs = [json.loads(p.read_text()) for p in reports]
    assert [r["seed"] for r in runs] == [1, 2]
    assert {r["job"] for r in runs} != {None} and sorted(r["task"] for r in runs) == ["0", "1"]  # one array

    removed = cli("sweep-remove", *overrides)
    assert tick["next_tick"] in removed.stdout, removed.stdout
    wait_until(
        lambda: sacct([tick["next_tick"]])[tick["next_tick"]]["State"].startswith("CANCELLED"),
        60,
        "the next tick to be cancelled",
    )
