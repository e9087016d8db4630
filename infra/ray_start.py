"""Starting Ray again when a start does not come up: the one retry policy of the two places that start Ray.

Ray waits a fixed 30 s for a new raylet to register with its GCS. On an overloaded host (the local Slurm cluster
shares its cores with every job and test) that wait times out: `ray.init` of a private instance raises "The
current node timed out during startup" (trainer.distributed.init_ray) and `ray start` of a job's head or worker
node exits (jobs.ray_cluster). A new attempt a moment later usually comes up, so both retry, after killing what
the failed attempt had started (its daemons hold ports and CPU). What counts as a failed start, how to clean it
up and how long to pause differ, and the callers say so; the number of attempts and the loop are here.
Only the standard library is imported (jobs.ray_cluster is imported on login nodes).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# attempts in all, for both paths; SLURM_GRPO_RAY_START_ATTEMPTS overrides it (read at each start)
DEFAULT_ATTEMPTS = 3
STARTUP_TIMEOUT_TEXT = "timed out during startup"  # Ray's message when its raylet did not register in time


class RayStartError(RuntimeError):
    """Ray did not come up, in this attempt or, raised by `start_with_retries`, in all of them."""


def start_attempts() -> int:
    return max(1, int(os.environ.get("SLURM_GRPO_RAY_START_ATTEMPTS", DEFAULT_ATTEMPTS)))


def is_startup_timeout(err: BaseException) -> bool:
    """Ray's raylet-registration timeout (Ray raises a bare Exception for it), the failure worth retrying."""
    return STARTUP_TIMEOUT_TEXT in str(err)


def start_with_retries(
    attempt: Callable[[], T],
    what: str,
    *,
    retryable: Callable[[Exception], bool],
    clean_up: Callable[[], None] = lambda: None,
    pause_s: float = 0.0,
    log: Callable[[str], None] = print,
    attempts: int | None = None,
) -> T:
    """Return `attempt()`'s result; when it raises an error `retryable` accepts, `clean_up()` what it left and
    try again, up to `attempts` (default `start_attempts()`) in all. Other errors propagate at once; after the
    last attempt a RayStartError says how many were made, with the last error as its cause."""
    attempts = start_attempts() if attempts is None else max(1, attempts)
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except Exception as err:
            if not retryable(err):
                raise
            clean_up()
            if number == attempts:
                raise RayStartError(f"{what} did not start in {attempts} attempts: {err}") from err
            log(f"{what} did not come up (attempt {number}/{attempts}: {err}); retrying")
            time.sleep(pause_s)
    raise AssertionError("unreachable")


# --- a Ray node held by a supervisor tied to the job's task ------------------------------------------------------
# `ray start --block` started by the job's task would outlive it: a task killed with SIGKILL (or by the OOM killer)
# leaves `ray start`, gcs_server, raylet and the agents re-parented to PID 1, holding memory and ports, and Slurm's
# proctrack/linuxproc cannot follow re-parented processes. Nor may Ray's daemons get Slurm's SIGTERM (`scancel`,
# `scontrol requeue`, preemption): raylet and the actors die of it at once, before the driver can save through them.
#
# So each node's `ray start --block` runs under a small supervisor (`python -m infra.ray_start supervise`) that
# detaches from the task's process tree (Slurm's SIGTERM to the step does not reach it or Ray on linuxproc) and is
# tied to the task by its PID instead: when the task process is gone (normal exit, exception, SIGKILL, node loss),
# or it is asked to stop (a stop file), it stops `ray start` (SIGTERM: Ray stops its processes), then kills its
# process group and any process left whose command line names the node's Ray temp dir. `ray start` itself gets
# SIGTERM from the kernel if the supervisor dies (PR_SET_PDEATHSIG), and Ray's daemons die with `ray start` (Ray's
# own kernel fate sharing). The supervisor writes a record (JSON: pids, temp dir, task) into the job's rendezvous
# folder and into the node-local temp dir, where a later job's `clean_stale_nodes` finds a node whose task is gone.

RECORD_NAME = "slurm_grpo_node.json"  # the node-local copy, in the Ray temp dir
PR_SET_PDEATHSIG = 1


def set_parent_death_signal(signum: int) -> None:
    """This process gets `signum` when its parent dies (Linux; a no-op elsewhere). For `preexec_fn`."""
    import ctypes
    import signal

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (AttributeError, OSError):
        return
    if parent == 1 or os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
        os.kill(os.getpid(), signal.Signals(signum))


def process_start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), None when it does not exist or is
    a zombie. PID and start time together name one process, a reused PID another."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def process_alive(pid: int, start_time: str | None) -> bool:
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def pids_naming(text: str) -> list[int]:
    """Live processes of this user whose command line contains `text` (e.g. a Ray temp dir), this one excepted."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmdline and process_start_time(int(entry)) is not None:
            found.append(int(entry))
    return found


def kill_node_processes(temp_dir: str, group: int | None = None) -> list[int]:
    """SIGKILL a Ray node's process group and every process left that names its temp dir; returns their pids."""
    import signal

    if group:
        try:
            os.killpg(group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    killed = []
    for _ in range(3):  # a process forked while we looked is caught by the next pass
        pids = pids_naming(temp_dir)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.2)
    return killed


def _write_json(path: str, data: dict) -> None:
    import json

    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_record(path: str) -> dict | None:
    import json

    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _supervise(task_pid: int, record_paths: list[str], temp_dir: str, stop_file: str, info: dict, cmd: list[str]):
    """The supervisor's body (already detached): run `cmd`, watch the task, tear down, exit."""
    import signal
    import subprocess

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)  # only the task's end or the stop file ends this node

    def preexec() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        set_parent_death_signal(signal.SIGTERM)  # SIGUSR2 stays ignored in Ray (see infra.signals)

    def log(message: str) -> None:
        print(f"[ray supervisor {time.strftime('%H:%M:%S')}] {message}", flush=True)

    task_start = process_start_time(task_pid)
    process = subprocess.Popen(cmd, start_new_session=True, preexec_fn=preexec)
    record = dict(
        info,
        supervisor_pid=os.getpid(),
        supervisor_start_time=process_start_time(os.getpid()),
        ray_pid=process.pid,
        group=process.pid,
        task_pid=task_pid,
        task_start_time=task_start,
        temp_dir=temp_dir,
        state="running",
    )

    def save(**changes) -> None:
        record.update(changes)
        for path in record_paths:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _write_json(path, record)
            except OSError:
                pass

    save()
    yield  # ready: the caller lets the task go
    reason = None
    while reason is None:
        if process.poll() is not None:
            reason = f"ray start exited with {process.returncode}"
        elif not process_alive(task_pid, task_start):
            reason = f"the job's task (pid {task_pid}) is gone"
        elif os.path.exists(stop_file):
            reason = "asked to stop"
        else:
            time.sleep(0.5)
    log(f"{reason}: stopping this Ray node")
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            pass
    killed = kill_node_processes(temp_dir, group=process.pid)
    if process.poll() is None:
        process.wait(10)
    if killed:
        log(f"killed {len(killed)} Ray processes left behind")
    save(state="stopped", reason=reason, ray_exit=process.returncode, stopped_at=time.time())


def supervise_main(argv: list[str]) -> int:
    """`python -m infra.ray_start supervise --task-pid P --temp-dir D --stop-file F --record R [--record R2]
    [--info JSON] -- ray start ... --block`: fork a detached supervisor, return once it has started Ray."""
    import argparse
    import json

    if "--" not in argv:
        raise SystemExit("supervise: the command to run comes after --")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="python -m infra.ray_start supervise")
    parser.add_argument("--task-pid", type=int, required=True)
    parser.add_argument("--temp-dir", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--record", action="append", required=True)
    parser.add_argument("--info", default="{}")
    args = parser.parse_args(argv[:split])
    cmd = argv[split + 1 :]
    read_end, write_end = os.pipe()
    if os.fork():  # the intermediate: exits once the supervisor runs Ray, which re-parents the supervisor
        os.close(write_end)
        ok = os.read(read_end, 1)
        return 0 if ok == b"1" else 1
    os.close(read_end)
    os.setsid()
    body = _supervise(args.task_pid, args.record, args.temp_dir, args.stop_file, json.loads(args.info), cmd)
    try:
        next(body)
    except BaseException:
        os.write(write_end, b"0")
        raise
    os.write(write_end, b"1")
    os.close(write_end)
    for _ in body:
        pass
    os._exit(0)


def clean_stale_nodes(temp_root: str, prefix: str, keep: str | None = None, log: Callable[[str], None] = print) -> int:
    """Stop the Ray nodes of earlier jobs of ours left on this host: those whose record (in `<temp_root>/<prefix>*/`)
    names a task that is gone. A node whose task still runs (another job's) is never touched; `ray stop` is never
    used. Returns the number of nodes cleaned."""
    import glob

    cleaned = 0
    for path in sorted(glob.glob(os.path.join(temp_root, f"{prefix}*", RECORD_NAME))):
        record = read_record(path)
        if not record or record.get("temp_dir") == keep or record.get("state") == "stopped":
            continue
        if process_alive(int(record.get("task_pid", 0)), record.get("task_start_time")):
            continue  # its job still runs
        temp_dir = str(record["temp_dir"])
        supervisor = int(record.get("supervisor_pid", 0))
        if supervisor and process_alive(supervisor, record.get("supervisor_start_time")):
            try:
                os.kill(supervisor, 9)
            except (ProcessLookupError, PermissionError):
                pass
        killed = kill_node_processes(temp_dir)  # by command line only: a recorded group id may be reused
        record.update(state="stopped", reason="stale: cleaned by a later job", stopped_at=time.time())
        try:
            _write_json(path, record)
        except OSError:
            pass
        if killed:
            log(f"stopped {len(killed)} processes of a stale Ray node (job {record.get('job_id')}, {temp_dir})")
            cleaned += 1
    return cleaned


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["supervise"]:
        raise SystemExit("usage: python -m infra.ray_start supervise ... -- ray start ... --block")
    sys.exit(supervise_main(sys.argv[2:]))
