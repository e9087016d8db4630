"""A train-stage `--target` for tests/test_placement_slurm.py: the run's GPU placement made real in a multi-node
Slurm job (Ray logical GPUs on a CPU cluster), with a probe actor where each policy rank and engine would start.

Writes `<run.root>/train/placement.json`: the plan (node and GPU index of every rank and engine GPU) and where
each probe landed (Ray node, the GPU id Ray gave it, the Slurm node its raylet runs on)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from infra.config import run_root
from infra.io import atomic_write_json


class _Probe:
    def where(self) -> dict[str, Any]:
        from trainer.ray_placement import where_am_i

        return {**where_am_i(), "slurm_node": os.environ.get("SLURMD_NODENAME")}


def probe_placement(cfg: DictConfig) -> Path:
    import ray

    from trainer.distributed import init_ray, ray_address
    from trainer.ray_placement import reserve_for

    init_ray(address=ray_address(cfg))
    reservation = reserve_for(cfg)
    assert reservation is not None, "cluster.gpus_per_node is 0: nothing to place"
    plan = reservation.plan
    probe = ray.remote(_Probe)
    try:
        ranks = [probe.options(**reservation.options_for_rank(r)).remote() for r in range(len(plan.policy_gpus))]
        engines = [probe.options(**reservation.options_for_engine(e)).remote() for e in range(len(plan.engine_gpus))]
        result = {
            "policy_gpus": [[gpu.node, gpu.index] for gpu in plan.policy_gpus],
            "engine_gpus": [[[gpu.node, gpu.index] for gpu in group] for group in plan.engine_gpus],
            "ranks": ray.get([a.where.remote() for a in ranks], timeout=120),
            "engines": ray.get([a.where.remote() for a in engines], timeout=120),
            "engine_visible_devices": [reservation.engine_visible_devices(e) for e in range(len(engines))],
        }
    finally:
        reservation.release()
    out = run_root(cfg) / "train" / "placement.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, result)
    return out
