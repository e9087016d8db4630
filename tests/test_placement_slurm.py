"""GPU placement in a real 2-node Slurm job of the local cluster (issue 18), with Ray logical GPUs: the job's Ray
spans both nodes (`jobs.ray_cluster`, 2 logical GPUs a node through SLURM_GRPO_RAY_LOGICAL_GPUS), the train
stage's `reserve_for(cfg)` holds the plan of a policy at TP 2 x DP 2 with 4 colocated TP-1 engines, and a probe
actor starts where each rank and engine would: every rank on its own GPU, each TP group inside one node, Megatron's
rank order over the nodes, each engine on its planned GPU beside its policy rank."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from infra.config import load_config
from jobs import chain
from jobs.ray_cluster import LOGICAL_GPUS_ENV
from jobs.stages import StageJob, make_executor
from tests.test_chain_slurm import run_overrides

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_two_node_job_places_ranks_and_engines_as_planned(local_cluster, tmp_path):
    if int(local_cluster["nodes"]) < 2:
        pytest.skip("needs NODES>=2")
    root = tmp_path / "run"
    overrides = run_overrides(
        root,
        "cluster.gpus_per_node=2",
        "slurm.gpus_per_node=0",  # the local cluster has no GPU gres: Ray's GPUs are logical
        "slurm.cpus_per_task=2",  # a CPU for each GPU bundle (trainer.ray_placement)
        "policy.megatron_cfg.tensor_model_parallel_size=2",
        f"slurm.setup=['export {LOGICAL_GPUS_ENV}=2']",
    )
    cfg = chain.resolve_config(load_config("tiny_cpu", overrides), nodes=2)
    job_def = StageJob("train", OmegaConf.to_yaml(cfg), target="tests.placement_stage:probe_placement", use_ray=True)
    job = make_executor(cfg, "train", nodes=2).submit(job_def)
    job.results()  # raises with the job's error if it failed
    placed = json.loads((root / "train" / "placement.json").read_text())

    assert placed["policy_gpus"] == [[0, 0], [0, 1], [1, 0], [1, 1]]  # Megatron order: TP pairs fill node 0 first
    assert placed["engine_gpus"] == [[[0, 0]], [[0, 1]], [[1, 0]], [[1, 1]]]  # colocated: an engine on every GPU
    ranks, engines = placed["ranks"], placed["engines"]
    rank_gpus = [(r["node_id"], r["gpu_ids"][0]) for r in ranks]
    assert len(set(rank_gpus)) == 4  # every rank its own GPU
    assert ranks[0]["node_id"] == ranks[1]["node_id"] != ranks[2]["node_id"] == ranks[3]["node_id"]  # TP in a node
    assert {r["slurm_node"] for r in ranks} == {"node1", "node2"}  # the second node's Ray took its half
    assert ranks[0]["slurm_node"] != ranks[2]["slurm_node"]
    for e, engine in enumerate(engines):
        assert (engine["node_id"], engine["gpu_ids"][0]) == rank_gpus[e]  # beside the rank on the same GPU
        assert engine["cuda_visible_devices"] == engine["gpu_ids"][0] == placed["engine_visible_devices"][e]
