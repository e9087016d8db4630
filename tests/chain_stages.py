"""Stage functions used only by the chain tests (run inside real Slurm jobs as `--target`s).

They are importable as `tests.chain_stages` because jobs run from the repo root (sbatch --chdir).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig

from infra import manifest, signals
from infra.io import atomic_write_json


def _testing(cfg: DictConfig, key: str, default):
    section = cfg.get("testing") or {}
    return section.get(key, default)


def counting_train(cfg: DictConfig) -> Path:
    """A resumable "trainer": counts to testing.count, one step per testing.step_s seconds, checkpointing the
    count to disk after every step; on the preemption flag it saves, notes it, and returns early."""
    out = manifest.stage_dir(cfg, "train")
    state_path = out / "counter_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"i": 0, "starts": [], "saves": []}
    state["starts"].append(
        {
            "restart": os.environ.get("SLURM_RESTART_COUNT", "0"),
            "from": state["i"],
            "job": os.environ.get("SLURM_JOB_ID"),
        }
    )
    atomic_write_json(state_path, state)
    count, step_s = int(_testing(cfg, "count", 20)), float(_testing(cfg, "step_s", 0.5))
    while state["i"] < count:
        time.sleep(step_s)
        state["i"] += 1
        atomic_write_json(state_path, state)
        if signals.preemption_requested():
            state["saves"].append({"at": state["i"], "reason": signals.preemption_reason()})
            atomic_write_json(state_path, state)
            print(f"[counting_train] saved at {state['i']} on {signals.preemption_reason()}", flush=True)
            return out
    manifest.write_manifest(cfg, "train", outputs=[state_path])
    return out


def ray_nodes(cfg: DictConfig) -> Path:
    """Connects to the job's Ray cluster and records its alive nodes and where a task per node ran."""
    import ray

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]

        @ray.remote(num_cpus=0)
        def where() -> str:
            return ray.get_runtime_context().get_node_id()

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        seen = ray.get(
            [
                where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                for n in nodes
            ]
        )
        info = {
            "address": os.environ["RAY_ADDRESS"],
            "alive_nodes": len(nodes),
            "node_manager_ports": sorted(n["NodeManagerPort"] for n in nodes),
            "task_nodes": sorted(set(seen)),
        }
    finally:
        ray.shutdown()
    out = manifest.stage_dir(cfg, "train")
    atomic_write_json(out / "ray_nodes.json", info)
    return out


def always_fails(cfg: DictConfig) -> Path:
    raise RuntimeError("this stage fails on purpose")


def passing_sanity(cfg: DictConfig) -> Path:
    """Stands in for the sanity suite in sweep tests: records which variant ran, writes the sanity manifest."""
    out = manifest.stage_dir(cfg, "sanity")
    report = out / "report.json"
    atomic_write_json(
        report,
        {
            "passed": True,
            "run": cfg.run.name,
            "seed": int(cfg.grpo.seed),
            "job": os.environ.get("SLURM_JOB_ID"),
            "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        },
    )
    manifest.write_manifest(cfg, "sanity", outputs=[report])
    return out
