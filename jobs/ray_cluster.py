"""A Ray cluster over the tasks of one Slurm job (one task per node), brought up from inside the job.

Task 0 starts the Ray head, waits until every node has joined, exports RAY_ADDRESS and runs the driver (the
stage function, which calls `ray.init()`/`ray.init(address=os.environ["RAY_ADDRESS"])`). The other tasks join
with `ray start --address ... --block` and stay until the head says it is done. At the end, or on any failure,
the head writes an ENDED marker, every node stops its own Ray processes (never `ray stop`: that would kill every
Ray on the host, other jobs' included), and the job ends with the driver's outcome.

Rendezvous and logs live in the job's submitit folder (shared filesystem):
    <log folder>/<jobid>_ray_<restart>/{head.json, ENDED, auth_token, head.log, worker-<rank>.log}
The same code runs on the local cluster (all "nodes" on one host, hence distinct ports per rank) and on a real
cluster. Nothing heavy is imported at module level; `ray` is imported only on the head, inside the job.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from infra import signals
from infra.io import atomic_write_json
from infra.ray_start import (
    RECORD_NAME,
    RayStartError,
    clean_stale_nodes,
    kill_node_processes,
    process_alive,
    read_record,
    start_with_retries,
)
from infra.signals import ignore_preemption_signal, keep_sigterm_handler

T = TypeVar("T")

HEAD_FILE = "head.json"
ENDED_FILE = "ENDED"
JOIN_TIMEOUT_S = float(os.environ.get("SLURM_GRPO_RAY_JOIN_TIMEOUT_S", "300"))
START_TIMEOUT_S = 240.0
LOGICAL_GPUS_ENV = "SLURM_GRPO_RAY_LOGICAL_GPUS"  # Ray GPUs per node where Slurm has none (tests of GPU placement)
STARTED_MARK = "Ray runtime started"  # what `ray start` prints once its node is registered
TEMP_PREFIX = "/tmp/ray-j"  # a node's Ray temp dir: <prefix><job>-r<restart>-n<rank>
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class NodePorts:
    """Ports of one Ray node. Ranks on the same host (the local cluster) must not share any."""

    gcs: int
    node_manager: int
    object_manager: int
    dashboard_agent_listen: int
    dashboard_agent_grpc: int
    metrics_export: int
    runtime_env_agent: int
    client_server: int
    min_worker: int
    max_worker: int

    @classmethod
    def for_rank(cls, job_id: str, rank: int) -> NodePorts:
        # one block of 1000 ports per job (40 blocks rotate by job id), 100 per rank
        digits = "".join(ch for ch in str(job_id) if ch.isdigit()) or "0"
        base = 20000 + (int(digits) % 40) * 1000 + (rank % 10) * 100
        return cls(base, base + 1, base + 2, base + 3, base + 4, base + 5, base + 6, base + 7, base + 20, base + 99)

    def args(self) -> list[str]:
        return [
            f"--node-manager-port={self.node_manager}",
            f"--object-manager-port={self.object_manager}",
            f"--dashboard-agent-listen-port={self.dashboard_agent_listen}",
            f"--dashboard-agent-grpc-port={self.dashboard_agent_grpc}",
            f"--metrics-export-port={self.metrics_export}",
            f"--runtime-env-agent-port={self.runtime_env_agent}",
            f"--min-worker-port={self.min_worker}",
            f"--max-worker-port={self.max_worker}",
        ]


@dataclass(frozen=True)
class TaskInfo:
    """Where this task sits in the job (from submitit's JobEnvironment, i.e. Slurm's variables)."""

    job_id: str
    rank: int
    num_nodes: int
    node_name: str
    head_node_name: str
    restart: int
    folder: Path

    @classmethod
    def from_environment(cls) -> TaskInfo:
        import submitit

        env = submitit.JobEnvironment()
        hostnames = list(env.hostnames) or [env.hostname]
        node_name = os.environ.get("SLURMD_NODENAME") or hostnames[min(env.node, len(hostnames) - 1)]
        return cls(
            job_id=str(env.job_id),
            rank=env.global_rank,
            num_nodes=env.num_tasks,
            node_name=node_name,
            head_node_name=hostnames[0],
            restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            folder=Path(env.paths.folder),
        )

    @property
    def rendezvous(self) -> Path:
        return self.folder / f"{self.job_id}_ray_{self.restart}"

    @property
    def temp_dir(self) -> str:
        # short: Ray puts unix sockets under it (path limit ~107 characters); one per node, also where the local
        # cluster runs several nodes on one host: a node's processes are found (and only its) by this path
        return f"{TEMP_PREFIX}{self.job_id}-r{self.restart}-n{self.rank}"


def _ray_cli() -> str:
    local = Path(sys.executable).parent / "ray"
    found = str(local) if local.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` command is not installed next to this Python or on PATH")
    return found


def auth_settings(task: TaskInfo, create: bool) -> dict[str, str]:
    """Ray's token authentication with a token of this job only, in the rendezvous folder (mode 600).

    Ray's default token lives in ~/.ray/auth_token, shared by every Ray of the user on the host: another job
    regenerating it would lock this job's nodes out of their own cluster. RAY_AUTH_MODE=disabled set by the
    user is respected."""
    if os.environ.get("RAY_AUTH_MODE") == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    path = task.rendezvous / "auth_token"
    if create:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


def _ray_env(auth: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", "0")  # stop at once when asked (default: drain 30 s)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)
    env.update(auth)
    return env


def _resources(num_cpus: int | None, num_gpus: int | None) -> list[str]:
    args = []
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    if num_gpus is not None:
        args.append(f"--num-gpus={num_gpus}")
    return args


def _log(message: str) -> None:
    print(f"[ray_cluster {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RayNode:
    """One node's `ray start --block`, run by infra.ray_start's supervisor (detached, tied to this task's PID).

    `poll()` is None while Ray runs, else its exit status; `stop()` asks the supervisor to stop Ray and waits;
    whatever is left after that (a supervisor that died) is killed by the node's temp dir."""

    def __init__(self, record: Path, stop_file: Path, temp_dir: str) -> None:
        self.record, self.stop_file, self.temp_dir = record, stop_file, temp_dir

    def info(self) -> dict:
        return read_record(str(self.record)) or {}

    def poll(self) -> int | None:
        info = self.info()
        if info.get("state") == "stopped":
            code = info.get("ray_exit")
            return -1 if code is None else int(code)
        supervisor = int(info.get("supervisor_pid", 0) or 0)
        if supervisor and not process_alive(supervisor, info.get("supervisor_start_time")):
            return -1  # the supervisor died without saying so
        return None

    @property
    def returncode(self) -> int | None:
        return self.poll()

    def stop(self, timeout: float = 40.0) -> None:
        self.stop_file.touch()
        deadline = time.time() + timeout
        while self.poll() is None and time.time() < deadline:
            time.sleep(0.3)
        self.kill()

    def kill(self) -> None:
        """Kill what is left of this node (by its temp dir: the job's processes only) and its supervisor."""
        info = self.info()
        supervisor = int(info.get("supervisor_pid", 0) or 0)
        if supervisor and process_alive(supervisor, info.get("supervisor_start_time")):
            try:
                os.kill(supervisor, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        kill_node_processes(self.temp_dir)


def _stop(process: RayNode, timeout: float = 40.0) -> None:
    """`ray start --block` stops the Ray processes it started when its supervisor asks it to (SIGTERM)."""
    process.stop(timeout)


def _start_node(
    cmd: list[str],
    log: Path,
    env: dict[str, str],
    what: str,
    task: TaskInfo,
    give_up: Callable[[], bool] = lambda: False,
) -> RayNode:
    """Run `ray start ... --block` under a supervisor (infra.ray_start) and return once it says its node is up.

    The supervisor detaches from this task's process tree and is tied to it by PID: it stops the node when this
    process is gone, whatever the way (SIGKILL included), or when `RayNode.stop()` asks. Slurm's SIGTERM to the
    step (`scancel`, `scontrol requeue`) and SIGUSR2 (time-limit warning) thus reach only the job's Python, which
    saves through a Ray that still runs. Records of the node (pids, temp dir) go to `<rendezvous>/node-<rank>.json`
    and `<temp dir>/slurm_grpo_node.json` (what `clean_stale_nodes` of a later job reads).

    A `ray start` that exits (Ray's startup timeout on an overloaded host, see infra.ray_start) or does not report
    its node within START_TIMEOUT_S is killed with what it had started, and started again (infra.ray_start's
    attempts). When `give_up()` turns true (the head ended) the dead node is returned, no error."""
    record = task.rendezvous / f"node-{task.rank}.json"
    stop_file = task.rendezvous / f"node-{task.rank}.stop"
    info = {"job_id": task.job_id, "restart": task.restart, "rank": task.rank, "node": task.node_name}
    supervise = [
        sys.executable,
        "-m",
        "infra.ray_start",
        "supervise",
        f"--task-pid={os.getpid()}",
        f"--temp-dir={task.temp_dir}",
        f"--stop-file={stop_file}",
        f"--record={record}",
        f"--record={task.temp_dir}/{RECORD_NAME}",
        f"--info={json.dumps(info)}",
        "--",
        *cmd,
    ]
    env = dict(env, PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p))

    def attempt() -> RayNode:
        offset = log.stat().st_size if log.exists() else 0
        stop_file.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        with log.open("ab") as out:
            launcher = subprocess.run(
                supervise,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
                preexec_fn=ignore_preemption_signal,
                timeout=120,
            )
        node = RayNode(record, stop_file, task.temp_dir)
        if launcher.returncode != 0:
            node.kill()
            raise RayStartError(f"the supervisor did not start (exit {launcher.returncode})")
        deadline = time.time() + START_TIMEOUT_S
        while True:
            with log.open("rb") as handle:
                handle.seek(offset)
                if STARTED_MARK.encode() in handle.read():
                    return node
            if node.poll() is not None or time.time() > deadline or give_up():
                break
            time.sleep(0.3)
        code = node.poll()
        node.kill()
        if give_up():
            return node
        raise RayStartError(f"exit {code}")

    try:
        return start_with_retries(
            attempt, what, retryable=lambda err: isinstance(err, RayStartError), pause_s=2.0, log=_log
        )
    except RayStartError as err:
        raise RayStartError(f"{err}; {log}:\n{_tail(log)}") from err.__cause__


def clean_stale_ray(task: TaskInfo) -> None:
    """Stop Ray nodes that earlier jobs of ours left on this host (their task is gone; see infra.ray_start)."""
    temp_root, prefix = os.path.split(TEMP_PREFIX)
    cleaned = clean_stale_nodes(temp_root, prefix, keep=task.temp_dir, log=_log)
    if cleaned:
        _log(f"cleaned {cleaned} stale Ray node(s) of earlier jobs on {task.node_name}")


def _wait_for_port(host: str, port: int, process: RayNode, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray head exited with {process.returncode} before listening; {log}:\n{_tail(log)}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"ray head not listening on {host}:{port} after {timeout:.0f}s; {log}:\n{_tail(log)}")


def _wait_for_nodes(address: str, expected: int, timeout: float, rendezvous: Path) -> None:
    import ray

    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        deadline = time.time() + timeout
        alive = 0
        while time.time() < deadline:
            alive = sum(1 for node in ray.nodes() if node.get("Alive"))
            if alive >= expected:
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"only {alive} of {expected} Ray nodes joined within {timeout:.0f}s; see {rendezvous}/worker-*.log"
        )
    finally:
        ray.shutdown()


def run_head(task: TaskInfo, driver: Callable[[], T], num_cpus: int | None, num_gpus: int | None) -> T:
    task.rendezvous.mkdir(parents=True, exist_ok=True)
    (task.rendezvous / ENDED_FILE).unlink(missing_ok=True)
    clean_stale_ray(task)
    ip = socket.gethostbyname(task.head_node_name)
    ports = NodePorts.for_rank(task.job_id, task.rank)
    log = task.rendezvous / "head.log"
    cmd = [
        _ray_cli(),
        "start",
        "--head",
        "--block",
        f"--node-ip-address={ip}",
        f"--port={ports.gcs}",
        f"--ray-client-server-port={ports.client_server}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={task.temp_dir}",
        *ports.args(),
        *_resources(num_cpus, num_gpus),
    ]
    address = f"{ip}:{ports.gcs}"
    started = time.time()
    auth = auth_settings(task, create=True)
    saved_env = {key: os.environ.get(key) for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", *auth)}
    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ.update(auth)  # the driver (this process) authenticates with the job's token
    process = None
    try:
        process = _start_node(cmd, log, _ray_env(auth), "ray head", task)
        _wait_for_port(ip, ports.gcs, process, log, timeout=120)
        head_info = {"address": address, "job_id": task.job_id, "restart": task.restart, "nodes": task.num_nodes}
        atomic_write_json(task.rendezvous / HEAD_FILE, head_info)  # workers poll for it: never a partial file
        if task.num_nodes > 1:  # one node: the driver's own ray.init waits for the head's raylet
            _log(f"head up at {address} on {task.node_name}; waiting for {task.num_nodes} nodes")
            with keep_sigterm_handler():  # ray.init's own handler would exit at once on SIGTERM
                _wait_for_nodes(address, task.num_nodes, JOIN_TIMEOUT_S, task.rendezvous)
        _log(f"ray cluster ready: {task.num_nodes} nodes in {time.time() - started:.1f}s; running the driver")
        os.environ["RAY_ADDRESS"] = address
        return driver()
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        try:
            import ray  # the driver may have left a connection open

            if ray.is_initialized():
                ray.shutdown()
        except ImportError:
            pass
        (task.rendezvous / ENDED_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if process is not None:
            _stop(process)
        _log("head stopped")


def run_worker(task: TaskInfo, num_cpus: int | None, num_gpus: int | None) -> None:
    """Join the head's cluster and hold this node until the head ends. A signal of Slurm's (SIGTERM on requeue or
    cancel, SIGUSR2 before the time limit) does not end a worker: the head saves, then writes ENDED."""
    clean_stale_ray(task)
    head_file, ended = task.rendezvous / HEAD_FILE, task.rendezvous / ENDED_FILE
    deadline = time.time() + JOIN_TIMEOUT_S
    while not head_file.exists():
        if ended.exists():
            _log("head ended before it started Ray; nothing to join")
            return
        if time.time() > deadline:
            raise TimeoutError(f"no Ray head announced in {head_file} after {JOIN_TIMEOUT_S:.0f}s")
        time.sleep(0.3)
    address = json.loads(head_file.read_text())["address"]
    ip = socket.gethostbyname(task.node_name)
    ports = NodePorts.for_rank(task.job_id, task.rank)
    log = task.rendezvous / f"worker-{task.rank}.log"
    cmd = [
        _ray_cli(),
        "start",
        f"--address={address}",
        "--block",
        f"--node-ip-address={ip}",
        "--disable-usage-stats",
        f"--temp-dir={task.temp_dir}",
        *ports.args(),
        *_resources(num_cpus, num_gpus),
    ]
    _log(f"rank {task.rank} on {task.node_name} joining {address}")
    head_node = task.rendezvous / "node-0.json"

    def head_gone() -> str | None:
        """Why the head is done: its ENDED marker, or its Ray node stopped (its task died without ending)."""
        if ended.exists():
            return "ended"
        head = read_record(str(head_node)) or {}
        return f"the head's Ray stopped ({head.get('reason')})" if head.get("state") == "stopped" else None

    process = _start_node(
        cmd,
        log,
        _ray_env(auth_settings(task, create=False)),
        f"ray worker on rank {task.rank}",
        task,
        give_up=lambda: head_gone() is not None,
    )
    try:
        while (reason := head_gone()) is None:
            if process.poll() is not None and head_gone() is None:
                if not signals.preemption_requested():
                    raise RuntimeError(
                        f"ray worker on rank {task.rank} exited with {process.returncode} while the "
                        f"head was still running; {log}:\n{_tail(log)}"
                    )
                # the job is being stopped (SIGTERM/USR2 reached this task too): the head saves and ends; wait
                # for it instead of failing the step before it could
                _log(f"rank {task.rank}: Ray exited after {signals.preemption_reason()}; waiting for the head")
                while head_gone() is None:
                    time.sleep(0.5)
                break
            time.sleep(0.5)
        if reason and reason != "ended":
            _log(f"rank {task.rank}: {reason}")
    finally:
        _stop(process)
    _log(f"rank {task.rank} left the Ray cluster")


def run_with_ray(driver: Callable[[], T], num_cpus: int | None = None, num_gpus: int | None = None) -> T | None:
    """Run `driver` on task 0 with a Ray cluster spanning all tasks of this job; other tasks return None."""
    task = TaskInfo.from_environment()
    if num_cpus is None and os.environ.get("SLURM_CPUS_PER_TASK"):
        num_cpus = int(os.environ["SLURM_CPUS_PER_TASK"])
    if num_gpus is None:
        # the GPUs Slurm gave this node; on a CPU cluster, Ray logical GPUs where asked for (placement tests)
        num_gpus = int(os.environ.get("SLURM_GPUS_ON_NODE") or os.environ.get(LOGICAL_GPUS_ENV) or 0)
    if task.rank == 0:
        return run_head(task, driver, num_cpus, num_gpus)
    run_worker(task, num_cpus, num_gpus)
    return None
