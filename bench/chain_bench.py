"""`make bench-chain`: the chain's overhead from `submit` to the first training step, beyond model loading.

What is timed is everything the chain adds before the trainer does its own work: the `python -m jobs submit`
command (config, manifests, sbatch), Slurm scheduling and dependency release, job start-up (Python, unpickling),
and the Ray cluster bring-up inside the train job. The train stage is replaced by a probe that records the moment
it is entered with Ray ready -- the point where the real trainer starts loading its model.

  cold: a fresh run, data -> prepare -> sanity -> train (data/prepare real, sanity a no-op that only writes its
        manifest: the real sanity suite is a test of its own, not chain overhead)
  warm: data/prepare/sanity up to date (skipped), only train submitted -- what `make submit-train` costs on a
        run whose inputs exist. Median of --repeats.

Writes bench/results/chain_bench.json and appends a row to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from jobs import slurm_state

REPO_ROOT = Path(__file__).resolve().parent.parent
PROBE = "probe.json"


# --- stage targets run inside the jobs ----------------------------------------------------------------------------


def noop_sanity(cfg: DictConfig) -> Path:
    from infra import manifest

    out = manifest.stage_dir(cfg, "sanity")
    report = out / "report.json"
    from infra.io import atomic_write_json

    atomic_write_json(report, {"passed": True, "checks": [], "note": "bench-chain placeholder"})
    manifest.write_manifest(cfg, "sanity", outputs=[report])
    return out


def first_step_probe(cfg: DictConfig) -> Path:
    """Entered where the trainer would start: record the time, the job start and that Ray answers."""
    entered = time.time()
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="WARNING")
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    ray.shutdown()
    from infra import manifest
    from infra.io import atomic_write_json

    out = manifest.stage_dir(cfg, "train")
    atomic_write_json(
        out / PROBE,
        {
            "entered": entered,
            "stage_started": float(os.environ["SLURM_GRPO_STAGE_START"]),
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "ray_nodes": nodes,
        },
    )
    return out


# --- driver ---------------------------------------------------------------------------------------------------------


def submit(root: Path, nodes: int, force_train: bool, rows: int) -> tuple[float, float]:
    """Run the submit command; returns (wall time when it was started, seconds it took)."""
    args = [
        sys.executable,
        "-m",
        "jobs",
        "--config",
        "tiny_cpu",
        "submit",
        "--until",
        "train",
        "--nodes",
        str(nodes),
        "--target",
        "sanity=bench.chain_bench:noop_sanity",
        "--target",
        "train=bench.chain_bench:first_step_probe",
    ]
    if force_train:
        args += ["--force", "train"]
    args += [
        f"run.root={root}",
        "data.source=local",
        f"data.local.generator_rows={rows}",
        "slurm.cpus_per_task=1",
        "slurm.mem_gb=2",
        "slurm.time_min=20",
    ]
    started = time.time()
    result = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"submit failed:\n{result.stdout}\n{result.stderr}")
    return started, time.time() - started


def sacct_times(job_id: str) -> dict[str, Any]:
    """Submit/start/end as epoch seconds (nan when not yet) and the job's state."""
    rec = slurm_state.sacct_records([job_id]).get(job_id)
    if rec is None:
        raise RuntimeError(f"job {job_id} is not in Slurm's accounting (yet)")
    parse = lambda text: _dt.datetime.fromisoformat(text).timestamp() if text[:1].isdigit() else float("nan")  # noqa
    return {"submit": parse(rec.submit), "start": parse(rec.start), "end": parse(rec.end), "state": rec.state}


def wait_probe(root: Path, after: float, timeout: float = 600) -> dict:
    path = root / "train" / PROBE
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            probe = json.loads(path.read_text())
            if probe["entered"] > after:
                return probe
        time.sleep(0.2)
    raise TimeoutError(f"no probe in {path} after {timeout}s; see `python -m jobs logs --stage train run.root={root}`")


def wait_job_end(job_id: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if slurm_state.is_final(sacct_times(job_id)["state"]):
            return
        time.sleep(0.5)


def measure(root: Path, nodes: int, force_train: bool, rows: int) -> dict:
    started, cli_s = submit(root, nodes, force_train, rows)
    probe = wait_probe(root, after=started)
    times = sacct_times(probe["job_id"])
    wait_job_end(probe["job_id"])
    return {
        "overhead_s": round(probe["entered"] - started, 2),
        "submit_cli_s": round(cli_s, 2),
        "queue_and_upstream_s": round(times["start"] - started, 2),  # sacct: 1 s resolution
        "job_start_to_stage_s": round(probe["stage_started"] - times["start"], 2),
        "ray_bringup_s": round(probe["entered"] - probe["stage_started"], 2),
        "ray_nodes": probe["ray_nodes"],
        "job_id": probe["job_id"],
    }


def append_benchmarks_row(result: dict) -> Path:
    path = REPO_ROOT / "docs" / "benchmarks.md"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Benchmarks\n")
    text = path.read_text()
    header = "## Chain overhead (`make bench-chain`)"
    if header not in text:
        text = text.rstrip("\n") + (
            f"\n\n{header}\n\nSubmit -> first training step, beyond model loading (the train stage is a probe "
            "entered with Ray ready; see bench/chain_bench.py). Target <= 15 s.\n\n"
            "| date | machine | nodes | warm: submit train only (median) | breakdown (CLI / queue / job start / Ray) "
            "| cold: data+prepare+sanity+train |\n|---|---|---|---|---|---|\n"
        )
    for run in result["runs"]:
        warm = run["warm_median"]
        text += (
            f"| {result['date']} | {result['machine']}, load {result['load_average_at_start'][0]:.1f} "
            f"| {run['nodes']} | {warm['overhead_s']:.1f} s "
            f"| {warm['submit_cli_s']:.1f} / {warm['queue_and_upstream_s']:.1f} / "
            f"{warm['job_start_to_stage_s']:.1f} / {warm['ray_bringup_s']:.1f} s "
            f"| {run['cold']['overhead_s']:.1f} s |\n"
        )
    path.write_text(text)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200, help="generator rows for the data stage")
    parser.add_argument("--no-doc", action="store_true", help="do not append to docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not shutil.which("sbatch"):
        raise SystemExit("bench-chain needs the local Slurm cluster: make cluster-up")
    base = Path(os.environ.get("SLURM_GRPO_RESULTS", REPO_ROOT / "results")).resolve() / "bench_chain"
    runs = []
    load_at_start = list(os.getloadavg())  # other work on the machine slows Ray's start-up most
    for nodes in args.nodes:
        root = base / f"nodes{nodes}"
        shutil.rmtree(root, ignore_errors=True)
        cold = measure(root, nodes, force_train=False, rows=args.rows)
        print(f"nodes={nodes} cold chain: {cold}", flush=True)
        warm = []
        for _ in range(args.repeats):
            warm.append(measure(root, nodes, force_train=True, rows=args.rows))
            print(f"nodes={nodes} warm: {warm[-1]}", flush=True)
        median = sorted(warm, key=lambda m: m["overhead_s"])[len(warm) // 2]
        runs.append(
            {
                "nodes": nodes,
                "cold": cold,
                "warm": warm,
                "warm_median": median,
                "warm_overheads_s": [m["overhead_s"] for m in warm],
                "warm_mean_s": round(statistics.mean(m["overhead_s"] for m in warm), 2),
            }
        )
    result = {
        "date": _dt.date.today().isoformat(),
        "machine": f"{platform.node()} ({os.cpu_count()} cpu)",
        "load_average_at_start": load_at_start,
        "load_average_at_end": list(os.getloadavg()),
        "runs": runs,
    }
    out = REPO_ROOT / "bench" / "results" / "chain_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    if not args.no_doc:
        print(f"appended to {append_benchmarks_row(result)}")
    for run in runs:
        print(
            f"nodes={run['nodes']}: warm overhead median {run['warm_median']['overhead_s']:.1f} s "
            f"(runs {run['warm_overheads_s']}), cold chain {run['cold']['overhead_s']:.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
