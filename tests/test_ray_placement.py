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
