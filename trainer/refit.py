"""Refit: the policy's new weights into the generation engines, by the transport the placement allows.

- `host`: the policy's rank 0 writes the HF state dict as safetensors bytes, the driver puts them in Ray's object
  store once and every engine loads them. Works everywhere (CPU, the torch backend); on a GPU it costs a
  device-to-host copy of the model and a serialisation per step.
- `cuda_ipc`: colocated on GPUs, every policy rank packs the full model in the engines' dtype into a buffer on its
  own GPU and shares it; each engine worker loads the buffer of its GPU (`trainer.generation.shared_weights`).
  Nothing leaves the GPU; only handles travel.
- `broadcast`: split placement (engines on GPUs of their own), policy rank 0 packs the same buffer and broadcasts
  it over a process group of its own with every engine worker: NCCL between GPUs, gloo on CPUs
  (`trainer.generation.weight_broadcast`). The group is made at the first refit.

`policy.generation.refit_transport: auto` takes `cuda_ipc` colocated on GPUs, `broadcast` split on GPUs and `host`
elsewhere.
"""

from __future__ import annotations

import time
from typing import Any

from trainer.interfaces import (
    BroadcastsWeights,
    Components,
    LoadsSharedWeights,
    ReceivesWeightBroadcast,
    SharesWeightsOnGpu,
)

TRANSPORTS = ("auto", "cuda_ipc", "broadcast", "host")


def refit_transport(cfg: Any) -> str:
    """`host`, `cuda_ipc` or `broadcast` for this run, from `policy.generation.refit_transport` and the placement."""
    gen = cfg.policy.generation
    wanted = str(gen.refit_transport)
    if wanted not in TRANSPORTS:
        raise ValueError(f"policy.generation.refit_transport={wanted!r}: expected one of {', '.join(TRANSPORTS)}")
    on_gpus, colocated, vllm = int(cfg.cluster.gpus_per_node) > 0, bool(gen.colocated.enabled), gen.backend == "vllm"
    blockers = []
    if not vllm:
        blockers.append(f"policy.generation.backend is {gen.backend!r} (only vllm engines take weights this way)")
    if wanted == "cuda_ipc":
        if not on_gpus:
            blockers.append("cluster.gpus_per_node is 0 (CUDA IPC needs GPUs)")
        if not colocated:
            blockers.append("policy.generation.colocated.enabled is false (the engines are on other GPUs)")
    if wanted in ("cuda_ipc", "broadcast") and blockers:
        raise ValueError(f"policy.generation.refit_transport={wanted} cannot work here: {'; '.join(blockers)}")
    if wanted == "auto":
        if not (vllm and on_gpus):
            return "host"
        return "cuda_ipc" if colocated else "broadcast"
    return wanted


def refit_engines(components: Components, dtype: str) -> dict[str, float]:
    """Load the policy's current weights (in `dtype`) into every engine; the generation's timings and sizes."""
    policy, generation = components.policy, components.generation
    if components.refit_transport == "cuda_ipc":
        if not isinstance(policy, SharesWeightsOnGpu) or not isinstance(generation, LoadsSharedWeights):
            raise TypeError(_unsupported("cuda_ipc", policy, generation, "share_weights", "update_weights_shared"))
        offers = policy.share_weights(dtype)
        try:
            return generation.update_weights_shared(offers)
        finally:
            policy.release_shared_weights()
    if components.refit_transport == "broadcast":
        if not isinstance(policy, BroadcastsWeights) or not isinstance(generation, ReceivesWeightBroadcast):
            raise TypeError(_unsupported("broadcast", policy, generation, "send_weights", "receive_weights"))
        return _refit_by_broadcast(components, policy, generation, dtype)
    return generation.update_weights(policy.export_weights_blob(dtype))


def _refit_by_broadcast(
    components: Components, policy: BroadcastsWeights, generation: ReceivesWeightBroadcast, dtype: str
) -> dict[str, float]:
    import ray

    from trainer.generation.weight_broadcast import Rendezvous

    if not components.refit_group_joined:
        host, port = policy.rendezvous_address()
        meet = Rendezvous(host, port, 1 + generation.broadcast_members)
        ray.get(policy.join_weight_broadcast(meet) + generation.join_weight_broadcast(host, port, meet.world_size))
        components.refit_group_joined = True
    started = time.perf_counter()
    specs, nbytes = policy.weights_for_broadcast(dtype)
    per_engine = ray.get(generation.receive_weights(specs, nbytes) + policy.send_weights())[:-1]
    return {
        "refit_seconds": time.perf_counter() - started,
        "refit_engine_seconds_max": max(per_engine),
        "refit_bytes": float(nbytes),
    }


def _unsupported(transport: str, policy: Any, generation: Any, policy_method: str, generation_method: str) -> str:
    return (
        f"refit_transport {transport} needs a policy with {policy_method} ({type(policy).__name__}) and a "
        f"generation backend with {generation_method} ({type(generation).__name__})"
    )
