"""The local Slurm cluster (slurm/local_cluster.sh) is real and idempotent: daemons up, nodes idle,
accounting answers, failed dependencies are cancelled, and `start` repairs what is missing."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("local_cluster")]

SCRIPT = Path(__file__).resolve().parent.parent / "slurm" / "local_cluster.sh"


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=300, **kw)


def test_status_lists_every_daemon_running(local_cluster):
    out = sh("bash", str(SCRIPT), "status").stdout
    for daemon in ("munged", "slurmdbd", "slurmctld", "mariadb"):
        assert f"{daemon}: running" in out, out
    for i in range(1, int(local_cluster["nodes"]) + 1):
        assert f"slurmd-node{i}: running" in out, out


def test_nodes_are_up_and_names_resolve(local_cluster):
    lines = sh("sinfo", "-h", "-N", "-o", "%N %T").stdout.split("\n")
    states = dict(line.split() for line in lines if line.strip())
    assert len(states) == int(local_cluster["nodes"])
    assert all(state.rstrip("*") in ("idle", "mixed", "allocated", "completing") for state in states.values()), states
    for node in states:
        assert "127.0.0.1" in sh("getent", "hosts", node).stdout


def test_second_start_is_a_quick_no_op():
    started = time.time()
    out = sh("bash", str(SCRIPT), "start").stdout
    assert time.time() - started < 15
    assert "started" not in out and "installing" not in out, out
    assert "ready" in out


def test_config_has_accounting_and_kills_invalid_dependencies():
    config = sh("scontrol", "show", "config").stdout
    assert "accounting_storage/slurmdbd" in config
    dependency_line = next(line for line in config.splitlines() if line.startswith("DependencyParameters"))
    assert "kill_invalid_depend" in dependency_line


def test_sacct_reports_completed_and_failed_dependency_is_cancelled(tmp_path):
    ok = sh("sbatch", "--parsable", "--wait", f"--chdir={tmp_path}", "--wrap", "true").stdout.strip()
    bad = sh("sbatch", "--parsable", f"--chdir={tmp_path}", "--wrap", "exit 3").stdout.strip()
    child = sh(
        "sbatch", "--parsable", f"--chdir={tmp_path}", f"--dependency=afterok:{bad}", "--wrap", "true"
    ).stdout.strip()
    deadline = time.time() + 90
    states = {}
    while time.time() < deadline:
        out = sh("sacct", "-X", "-P", "-n", "-j", f"{ok},{bad},{child}", "-o", "JobIDRaw,State").stdout
        states = dict(line.split("|") for line in out.splitlines() if line)
        if states.get(child, "").startswith("CANCELLED"):
            break
        time.sleep(1)
    assert states.get(ok) == "COMPLETED", states
    assert states.get(bad) == "FAILED", states
    assert states.get(child, "").startswith("CANCELLED"), states
    assert "DependencyNeverSatisfied" in sh("scontrol", "show", "job", child).stdout


def test_start_restarts_a_dead_node_daemon(local_cluster):
    node = f"node{local_cluster['nodes']}"
    pid_file = Path(f"/run/slurm/slurmd-{node}.pid")
    pid = int(pid_file.read_text())
    sh("kill", str(pid))
    for _ in range(50):
        stat = Path(f"/proc/{pid}/stat")
        if not stat.exists() or stat.read_text().split()[2] == "Z":
            break
        time.sleep(0.1)
    out = sh("bash", str(SCRIPT), "start").stdout
    assert f"slurmd {node} started" in out, out
    assert int(pid_file.read_text()) != pid
    state = sh("sinfo", "-h", "-n", node, "-o", "%T").stdout.strip()
    assert state.rstrip("*") in ("idle", "mixed", "allocated"), state
