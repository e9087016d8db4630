"""A plan reserved in a real Ray instance with logical GPUs: actors land where the plan says, never two policy
ranks on one GPU, engines see their whole TP group, and a plan Ray cannot hold fails fast naming the shortage."""

from __future__ import annotations

import pytest

from trainer.placement import PlacementRequest, plan_placement

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def logical_gpus():
    ray.init(address="local", num_cpus=4, num_gpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@ray.remote
class Probe:
    def where(self) -> tuple[str, list[str]]:
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), [str(g) for g in ctx.get_accelerator_ids()["GPU"]]


def test_colocated_actors_land_on_the_planned_gpus(logical_gpus):
    from trainer.ray_placement import Reservation

    plan = plan_placement(PlacementRequest(num_nodes=1, gpus_per_node=8, gpu_memory_gib=80, policy_tp=2, engine_tp=2))
    reservation = Reservation(plan, cpus_per_gpu=0.5, timeout_s=60)
    try:
        ranks = [Probe.options(**reservation.options_for_rank(r)).remote() for r in range(len(plan.policy_gpus))]
        engines = [Probe.options(**reservation.options_for_engine(e)).remote() for e in range(len(plan.engine_gpus))]
        rank_where = ray.get([a.where.remote() for a in ranks])
        engine_where = ray.get([a.where.remote() for a in engines])
        rank_gpus = [ids[0] for _, ids in rank_where]
        assert len(set(rank_gpus)) == 8  # every rank its own GPU
        for e, (_, ids) in enumerate(engine_where):
            group = reservation.engine_visible_devices(e).split(",")
            assert len(group) == 2 and ids[0] == group[0]
            assert group == [rank_gpus[2 * e], rank_gpus[2 * e + 1]]  # the TP group shares GPUs with ranks 2e, 2e+1
        assert {gpu.node_id for gpu in reservation.devices.values()} == {rank_where[0][0]}
        for a in ranks + engines:
            ray.kill(a)
    finally:
        reservation.release()


def test_a_plan_larger_than_ray_fails_fast_naming_the_shortage(logical_gpus):
    from trainer.ray_placement import Reservation

    plan = plan_placement(PlacementRequest(num_nodes=2, gpus_per_node=8, gpu_memory_gib=80))
    with pytest.raises(TimeoutError) as err:
        Reservation(plan, cpus_per_gpu=0.1, timeout_s=3)
    text = str(err.value)
    assert "2 node(s) x 8 GPU(s)" in text and "Ray has 1 node(s)" in text and "8 GPU" in text
    assert "cluster.gpus_per_node" in text
    # the groups that could not be placed were removed: the one node's GPUs are free again
    plan_one = plan_placement(PlacementRequest(num_nodes=1, gpus_per_node=8, gpu_memory_gib=80))
    Reservation(plan_one, cpus_per_gpu=0.1, timeout_s=30).release()


def test_policy_ranks_start_on_the_reserved_gpus(logical_gpus, tmp_path):
    """The real policy workers (toy Megatron GPT, gloo on CPU) placed by a plan on 4 logical GPUs: each rank on
    its own bundle, and the group trains."""
    from infra.config import load_config
    from tests.grpo.grpo_testlib import random_batch
    from tests.grpo.toy import build_toy_gpt, export_toy_state_dict
    from trainer.policy.worker import PolicyGroup
    from trainer.ray_placement import reserve_for

    cfg = load_config(
        "tiny_cpu",
        [
            f"run.root={tmp_path}",
            "cluster.gpus_per_node=4",
            "policy.megatron_cfg.tensor_model_parallel_size=2",
            "policy.train_global_batch_size=8",
            "policy.train_micro_batch_size=2",
            "policy.generation.vllm_cfg.tensor_parallel_size=2",
        ],
    )
    reservation = reserve_for(cfg)
    assert reservation is not None and len(reservation.plan.engine_gpus) == 2
    group = PolicyGroup(cfg, build_toy_gpt, export_toy_state_dict, total_steps=2, placement=reservation)
    try:
        assert [info["tp_rank"] for info in group.setup_info] == [0, 1, 0, 1]
        where = ray.get([w.where.remote() for w in group.workers])
        gpus = [w["gpu_ids"] for w in where]
        assert all(len(ids) == 1 for ids in gpus) and len({ids[0] for ids in gpus}) == 4
        assert [ids[0] for ids in gpus] == [reservation.devices[g].gpu_id for g in reservation.plan.policy_gpus]
        metrics = group.train(random_batch(n=8, seed=3))
        assert metrics["grad_norm"] > 0
    finally:
        group.shutdown()
        reservation.release()
