"""`init_ray()` without an address must start a private Ray, never join a cluster another process announced.

Ray's `ray.init(address=None)` connects to the address in `<tmp>/ray/ray_current_cluster` when that file exists
(any `ray start` or test cluster on the host writes it). A Slurm job's sanity stage once joined another user's
Ray that way and its actors were cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, ray
from trainer.distributed import init_ray
init_ray(num_cpus=1)
print("GCS", ray.get_runtime_context().gcs_address)
print("AUTH_MODE_AFTER", os.environ.get("RAY_AUTH_MODE", "unset"))
print("REMOTE", ray.get(ray.remote(lambda: "ok").remote()))
ray.shutdown()
"""


@pytest.mark.slow
def test_init_ray_without_address_ignores_an_announced_cluster():
    # a short temp root: Ray puts unix sockets under it
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as tmp:
        announced = Path(tmp) / "ray" / "ray_current_cluster"
        announced.parent.mkdir()
        announced.write_text("127.0.0.1:9")  # nothing listens there: joining it would fail
        env = {"PATH": "/usr/bin:/bin", "RAY_TMPDIR": tmp, "HOME": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        out = subprocess.run(
            [sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180
        )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    gcs = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("GCS"))
    assert gcs != "127.0.0.1:9"
    # the private instance's "no token" must not leak into jobs this process submits later (sbatch exports the
    # environment; a two-node train job then skipped its own token); its actors still run
    assert "AUTH_MODE_AFTER unset" in out.stdout and "REMOTE ok" in out.stdout, out.stdout


def test_ray_address_of_one_node_stages_is_private_even_when_train_spans_nodes(monkeypatch):
    """sanity/sft/eval share the train job's config (cluster.num_nodes=2) but run on one node: a private Ray."""
    from omegaconf import OmegaConf

    from trainer.distributed import ray_address

    cfg = OmegaConf.create({"cluster": {"num_nodes": 2}})
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    assert ray_address(cfg) is None
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "2")
    assert ray_address(cfg) == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:20000")  # what jobs.ray_cluster exports on the head
    assert ray_address(cfg) == "10.0.0.1:20000"


def fake_task(folder, rank: int = 0, job_id: str | None = None):
    """Where a job's task would sit: rendezvous under `folder`, a Ray temp dir of its own under /tmp."""
    from jobs import ray_cluster

    task = ray_cluster.TaskInfo(
        job_id=job_id or f"t{os.getpid()}x{time.monotonic_ns() % 10**6}",
        rank=rank,
        num_nodes=1,
        node_name="node1",
        head_node_name="node1",
        restart=0,
        folder=folder,
    )
    task.rendezvous.mkdir(parents=True, exist_ok=True)
    return task


def test_ray_node_start_is_retried_when_an_attempt_dies(tmp_path):
    """`ray start` gives up after a fixed 30 s raylet registration wait on an overloaded host; the job's
    Ray-on-Slurm launcher starts the node again instead of failing the job. A script stands in for `ray start`:
    its first run exits like the timed-out one, the second reports the started node and blocks."""
    from jobs import ray_cluster

    attempts = tmp_path / "attempts"
    fake = tmp_path / "fake_ray_start.sh"
    fake.write_text(f"""#!/bin/bash
echo x >> {attempts}
if [ $(wc -l < {attempts}) -lt 2 ]; then echo "Exception: The current node timed out during startup."; exit 1; fi
echo "{ray_cluster.STARTED_MARK}."
exec sleep 60
""")
    fake.chmod(0o755)
    log = tmp_path / "head.log"
    process = ray_cluster._start_node([str(fake)], log, {"PATH": "/usr/bin:/bin"}, "fake head", fake_task(tmp_path))
    try:
        assert process.poll() is None  # the second attempt, still running
        assert len(attempts.read_text().split()) == 2
        assert "timed out during startup" in log.read_text()
    finally:
        ray_cluster._stop(process)


def test_ray_node_start_gives_up_after_the_last_attempt(tmp_path, monkeypatch):
    from jobs import ray_cluster

    monkeypatch.setenv("SLURM_GRPO_RAY_START_ATTEMPTS", "2")  # infra.ray_start's attempts, shared with init_ray
    fake = tmp_path / "always_fails.sh"
    fake.write_text("#!/bin/bash\necho 'raylet failed'\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError, match="(?s)did not start in 2 attempts.*raylet failed"):
        ray_cluster._start_node(
            [str(fake)], tmp_path / "w.log", {"PATH": "/usr/bin:/bin"}, "fake worker", fake_task(tmp_path)
        )


def test_local_ray_start_is_retried_after_the_startup_timeout():
    """The retry around ray.init of a local instance: once for Ray's startup timeout, never for other errors."""
    from trainer.distributed import _start_local_ray

    class FlakyRay:
        def __init__(self, errors):
            self.errors, self.calls, self.shutdowns = list(errors), 0, 0

        def init(self, address, **kwargs):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

        def shutdown(self):
            self.shutdowns += 1

    flaky = FlakyRay([Exception("The current node timed out during startup. This could happen ...")])
    _start_local_ray(flaky, "local", {})
    assert (flaky.calls, flaky.shutdowns) == (2, 1)
    other = FlakyRay([ValueError("bad runtime_env")])
    with pytest.raises(ValueError, match="bad runtime_env"):
        _start_local_ray(other, "local", {})
    assert other.calls == 1
    timeout = Exception("The current node timed out during startup.")
    stuck = FlakyRay([timeout] * 3)
    with pytest.raises(RuntimeError, match="local Ray did not start in 3 attempts") as raised:
        _start_local_ray(stuck, "local", {})
    assert (stuck.calls, stuck.shutdowns) == (3, 3) and raised.value.__cause__ is timeout


def test_start_with_retries_retries_only_what_the_caller_says():
    from infra.ray_start import RayStartError, start_with_retries

    calls, cleaned, said = [], [], []

    def attempt():
        calls.append(1)
        if len(calls) < 3:
            raise RayStartError(f"exit {len(calls)}")
        return "up"

    ok = start_with_retries(
        attempt,
        "node",
        retryable=lambda e: isinstance(e, RayStartError),
        clean_up=lambda: cleaned.append(1),
        log=said.append,
        attempts=3,
    )
    assert ok == "up" and len(calls) == 3 and len(cleaned) == 2
    assert said == [
        "node did not come up (attempt 1/3: exit 1); retrying",
        "node did not come up (attempt 2/3: exit 2); retrying",
    ]
    with pytest.raises(KeyError):
        start_with_retries(lambda: {}["x"], "node", retryable=lambda e: isinstance(e, RayStartError), log=said.append)


USR2_CHILD = """
import os, signal, time, ray
from trainer.distributed import init_ray
mine = lambda *_: None
signal.signal(signal.SIGUSR2, mine)
init_ray(num_cpus=1)
assert signal.getsignal(signal.SIGUSR2) is mine, "the driver's own handler must be back"

@ray.remote(num_cpus=1)
class Pid:
    def pid(self):
        return os.getpid()

actor = Pid.remote()
pid = ray.get(actor.pid.remote())
os.kill(pid, signal.SIGUSR2)  # what Slurm's --signal=USR2@N does to every process of the step
time.sleep(2)
print("ALIVE", ray.get(actor.pid.remote(), timeout=60) == pid)
ray.shutdown()
"""


@pytest.mark.slow
def test_local_ray_actors_survive_slurms_usr2_warning():
    with tempfile.TemporaryDirectory(prefix="rt", dir="/tmp") as tmp:
        env = {"PATH": "/usr/bin:/bin", "RAY_TMPDIR": tmp, "HOME": tmp, "RAY_USAGE_STATS_ENABLED": "0"}
        out = subprocess.run(
            [sys.executable, "-c", USR2_CHILD], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240
        )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "ALIVE True" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]


def test_ray_start_runs_with_usr2_ignored(tmp_path):
    """`ray start` (and so every Ray process it spawns) inherits SIGUSR2 ignored; checked on a stand-in."""
    from jobs import ray_cluster

    fake = tmp_path / "show_ignored.sh"
    fake.write_text(f"""#!/bin/bash
grep SigIgn /proc/$$/status
echo "{ray_cluster.STARTED_MARK}."
exec sleep 60
""")
    fake.chmod(0o755)
    log = tmp_path / "node.log"
    process = ray_cluster._start_node([str(fake)], log, {"PATH": "/usr/bin:/bin"}, "stand-in", fake_task(tmp_path))
    ray_cluster._stop(process)
    ignored = int(log.read_text().split("SigIgn:")[1].split()[0], 16)
    assert ignored & (1 << (12 - 1)), log.read_text()  # SIGUSR2 is signal 12 on Linux


STAND_IN_NODE = """#!/bin/bash
# stands in for `ray start --block`: a daemon that leaves its process group (as Ray's may) and one that stays,
# both naming the node's temp dir on their command line, as every Ray process does
setsid python3 -c 'import time; time.sleep(600)' {temp_dir}/daemon &
python3 -c 'import time; time.sleep(600)' {temp_dir}/raylet &
echo "{mark}."
wait
"""

TASK = """
import sys, time
from pathlib import Path
from jobs import ray_cluster
task = ray_cluster.TaskInfo(job_id=sys.argv[1], rank=0, num_nodes=1, node_name="node1", head_node_name="node1",
                            restart=0, folder=Path(sys.argv[2]))
node = ray_cluster._start_node([sys.argv[3]], Path(sys.argv[2]) / "head.log", {"PATH": "/usr/bin:/bin"}, "head", task)
print("UP", flush=True)
time.sleep(600)
"""


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def test_a_node_is_stopped_when_its_task_is_killed(tmp_path):
    """Issue 19 (1): `kill -9` of the job's Python left `ray start` and Ray's daemons running, re-parented to PID 1.
    Now the node's supervisor sees the task gone and stops everything that names the node's temp dir."""
    from infra.ray_start import pids_naming
    from jobs import ray_cluster

    task = fake_task(tmp_path)
    stand_in = tmp_path / "ray_start.sh"
    stand_in.write_text(STAND_IN_NODE.format(temp_dir=task.temp_dir, mark=ray_cluster.STARTED_MARK))
    stand_in.chmod(0o755)
    child = subprocess.Popen(
        [sys.executable, "-c", TASK, task.job_id, str(tmp_path), str(stand_in)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "UP"
        daemons = lambda: pids_naming(f"{task.temp_dir}/daemon") + pids_naming(f"{task.temp_dir}/raylet")  # noqa: E731
        wait_for(lambda: len(daemons()) == 2, 30, "both stand-in daemons")
        record = json.loads((task.rendezvous / "node-0.json").read_text())
        assert record["task_pid"] == child.pid and record["temp_dir"] == task.temp_dir
        assert json.loads(Path(task.temp_dir, "slurm_grpo_node.json").read_text())["task_pid"] == child.pid
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        wait_for(lambda: not pids_naming(task.temp_dir), 60, "the node's processes (supervisor included) to end")
        record = wait_for(
            lambda: (r := json.loads((task.rendezvous / "node-0.json").read_text()))["state"] == "stopped" and r,
            30,
            "the supervisor's record",
        )
        assert "is gone" in record["reason"], record
    finally:
        child.kill()
        from infra.ray_start import kill_node_processes

        kill_node_processes(task.temp_dir)


def test_stale_nodes_of_ended_tasks_are_cleaned_and_live_ones_kept(tmp_path):
    """A job start stops Ray left by an earlier job of ours (its recorded task is gone), never a running job's."""
    from infra.ray_start import RECORD_NAME, clean_stale_nodes, pids_naming, process_start_time

    root = Path(tempfile.mkdtemp(prefix="stale", dir="/tmp"))
    sleeper = "import time; time.sleep(600)"
    dead_task = subprocess.Popen(["true"])
    dead_task.wait()
    dirs = {name: root / f"ray-jtest{name}" for name in ("dead", "live")}
    procs = []
    try:
        for name, folder in dirs.items():
            folder.mkdir()
            procs.append(subprocess.Popen([sys.executable, "-c", sleeper, str(folder / "raylet")]))
            task_pid = dead_task.pid if name == "dead" else os.getpid()
            record = {"task_pid": task_pid, "task_start_time": process_start_time(task_pid), "temp_dir": str(folder)}
            record["job_id"], record["state"] = name, "running"
            (folder / RECORD_NAME).write_text(json.dumps(record))
        wait_for(lambda: all(pids_naming(str(f)) for f in dirs.values()), 30, "the stand-in daemons")
        assert clean_stale_nodes(str(root), "ray-jtest", log=lambda _: None) == 1
        wait_for(lambda: not pids_naming(str(dirs["dead"])), 30, "the stale node to be stopped")
        assert pids_naming(str(dirs["live"])), "a node whose task still runs was stopped"
        assert json.loads((dirs["dead"] / RECORD_NAME).read_text())["state"] == "stopped"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
