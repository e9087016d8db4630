"""Shared fixtures. `local_cluster`: the real local Slurm cluster, brought up once per session with
`slurm/local_cluster.sh start` (idempotent; needs root, as in CI). Tests that submit jobs use it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def local_cluster() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("the local Slurm cluster needs root (slurm/local_cluster.sh start)")
    env = dict(os.environ, NODES=os.environ.get("NODES", "2"))
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "slurm" / "local_cluster.sh"), "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"local cluster did not come up:\n{result.stdout}\n{result.stderr}")
    assert shutil.which("sbatch"), "sbatch missing after cluster start"
    return {"nodes": env["NODES"], "start_log": result.stdout}


@pytest.fixture(autouse=True, scope="module")
def _fresh_ray_per_module():
    """Stop any Ray instance a module started (stages call init_ray and leave it up), so that the next module's
    actors never queue behind an earlier module's idle ones for the 2 CPUs."""
    yield
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
