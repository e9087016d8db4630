"""A placement plan made real in Ray: one placement group per node, one bundle per GPU, and actor options that put
each policy rank and engine on the bundles the plan names.

One group per node (STRICT_PACK) makes "node n, GPU i" mean something: bundle i of group n is one GPU of one
node, whichever host Ray picks for the group. Actors never ask Ray for GPUs outside the groups, so nothing can
wait for a GPU that another actor holds. Reserving has a deadline: when the groups cannot be placed the error
says what the plan wanted and what Ray has, per node, instead of waiting forever. Each bundle is probed once for
its host and GPU id, which gives an engine of TP > 1 the devices of its whole group (one actor drives them).
Works the same with Ray's logical GPUs (`ray.init(num_gpus=N)` on a CPU machine), which is how CI tests it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer.placement import Gpu, PlacementPlan

RESERVE_TIMEOUT_S = 300.0
ACTOR_START_TIMEOUT_S = 1800.0  # loading a model from a shared filesystem and compiling kernels take minutes


@dataclass(frozen=True)
class Device:
    """What a bundle turned out to be: the host's node id and IP, and the GPU id Ray assigns there."""

    node_id: str
    node_ip: str
    gpu_id: str


def _where() -> tuple[str, str, list[str]]:
    import ray

    ctx = ray.get_runtime_context()
    return ctx.get_node_id(), ray.util.get_node_ip_address(), [str(g) for g in ctx.get_accelerator_ids()["GPU"]]


def where_am_i() -> dict[str, Any]:
    """Inside an actor: its node, the GPU ids Ray gave it and what CUDA will see (for plans checked against
    what runs)."""
    import os

    node_id, ip, gpu_ids = _where()
    return {
        "node_id": node_id,
        "node_ip": ip,
        "gpu_ids": gpu_ids,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def reserve_for(cfg: Any) -> Reservation | None:
    """The run's placement plan, printed and held in Ray, before any policy rank or engine starts; None without
    GPUs (CPU actors need no placement)."""
    from trainer.placement import plan_for

    if int(cfg.cluster.gpus_per_node) <= 0:
        return None
    plan = plan_for(cfg)
    print(plan.describe(), flush=True)
    return Reservation(plan)


def get_started(refs: list, what: str, timeout_s: float = ACTOR_START_TIMEOUT_S) -> list:
    """`ray.get` of actors' first calls with a deadline; the error names the actors that did not answer and
    what Ray has free, instead of waiting forever."""
    import ray

    ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [i for i, ref in enumerate(refs) if ref in pending]
        raise TimeoutError(
            f"{what} {late} did not start within {timeout_s:g} s; Ray has free {ray.available_resources()} "
            f"of {ray.cluster_resources()}. A model load from a slow filesystem can take this long; a missing "
            f"GPU or node cannot: check cluster.gpus_per_node and the job's allocation"
        )
    return ray.get(refs)


class Reservation:
    """The plan's GPUs held in placement groups; `options_for_rank` / `options_for_engine` place actors on them."""

    def __init__(self, plan: PlacementPlan, cpus_per_gpu: float = 1.0, timeout_s: float = RESERVE_TIMEOUT_S):
        import ray
        from ray.util.placement_group import placement_group

        self.plan, self.cpus_per_gpu = plan, cpus_per_gpu
        r = plan.request
        self.groups = [
            placement_group(
                [{"GPU": 1, "CPU": cpus_per_gpu}] * r.gpus_per_node,
                strategy="STRICT_PACK",
                name=f"slurm_grpo_node{node}",
            )
            for node in range(r.num_nodes)
        ]
        ready = [group.ready() for group in self.groups]
        done, _ = ray.wait(ready, num_returns=len(ready), timeout=timeout_s)
        if len(done) < len(ready):
            self.release()
            raise TimeoutError(self._shortage_message(cpus_per_gpu, timeout_s))
        probe = ray.remote(num_cpus=0, num_gpus=0.001)(_where)
        every = [gpu for node in range(r.num_nodes) for gpu in plan.gpus_of_node(node)]
        found = ray.get([probe.options(scheduling_strategy=self.strategy(gpu)).remote() for gpu in every])
        self.devices = {gpu: Device(node_id, ip, ids[0]) for gpu, (node_id, ip, ids) in zip(every, found)}

    def _shortage_message(self, cpus_per_gpu: float, timeout_s: float) -> str:
        import ray

        r = self.plan.request
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        have = (
            "; ".join(
                f"{n['NodeManagerAddress']}: {n['Resources'].get('GPU', 0):g} GPU, {n['Resources'].get('CPU', 0):g} CPU"
                for n in nodes
            )
            or "no nodes"
        )
        return (
            f"placement: {r.num_nodes} node(s) x {r.gpus_per_node} GPU(s) (+{cpus_per_gpu:g} CPU each) could "
            f"not be reserved within {timeout_s:g} s; Ray has {len(nodes)} node(s): {have}. Check that "
            f"cluster.num_nodes / cluster.gpus_per_node match the job's allocation (--nodes, --gpus-per-node) "
            f"and that every node's Ray joined"
        )

    def strategy(self, gpu: Gpu) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return PlacementGroupSchedulingStrategy(
            placement_group=self.groups[gpu.node], placement_group_bundle_index=gpu.index
        )

    def _share(self, gpu: Gpu) -> float:
        """Half a GPU where a policy rank and an engine share it, the whole GPU otherwise."""
        on_policy = gpu in self.plan.policy_gpus
        on_engine = any(gpu in group for group in self.plan.engine_gpus)
        return 0.5 if on_policy and on_engine else 1.0

    def options_for_rank(self, rank: int) -> dict[str, Any]:
        gpu = self.plan.policy_gpus[rank]
        share = self._share(gpu)
        return {"num_cpus": share * self.cpus_per_gpu, "num_gpus": share, "scheduling_strategy": self.strategy(gpu)}

    def options_for_engine(self, engine: int) -> dict[str, Any]:
        """The engine actor sits on its group's first GPU; the other GPUs of its TP group are reserved for it by
        the plan, and `engine_visible_devices` names them for the engine's worker processes."""
        first = self.plan.engine_gpus[engine][0]
        share = self._share(first)
        return {"num_cpus": share * self.cpus_per_gpu, "num_gpus": share, "scheduling_strategy": self.strategy(first)}

    def engine_visible_devices(self, engine: int) -> str:
        """CUDA_VISIBLE_DEVICES for engine `engine`: its TP group's GPU ids, in TP order."""
        return ",".join(self.devices[gpu].gpu_id for gpu in self.plan.engine_gpus[engine])

    def release(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for group in self.groups:
            try:
                remove_placement_group(group)
            except Exception:  # a group that never came up, or Ray already shut down
                pass
