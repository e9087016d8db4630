"""`init_ray()` without an address must start a private Ray, never join a cluster another process announced.

Ray's `ray.init(address=None)` connects to the address in `<tmp>/ray/ray_current_cluster` when that file exists
(any `ray start` or test cluster on the host writes it). A Slurm job's sanity stage once joined another user's
Ray that way and its actors were cancelled."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, ray
from pipeline.distributed import init_ray
init_ray(num_cpus=1)
print("GCS", ray.get_runtime_context().gcs_address)
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
        out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=env, capture_output=True,
                             text=True, timeout=180)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    gcs = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("GCS"))
    assert gcs != "127.0.0.1:9"
