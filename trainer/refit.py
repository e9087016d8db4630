"""Refit: the policy's new weights into the generation engines, by the transport the placement allows.

- `host`: the policy's rank 0 writes the HF state dict as safetensors bytes, the driver puts them in Ray's object
  store once and every engine loads them. Works everywhere (CPU, split GPUs, the torch backend); on a GPU it costs
  a device-to-host copy of the model and a serialisation per step.
- `cuda_ipc`: colocated on GPUs, every policy rank packs the full model in the engines' dtype into a buffer on its
  own GPU and shares it; each engine worker loads the buffer of its GPU (`trainer.generation.shared_weights`).
  Nothing leaves the GPU; only handles travel.

`policy.generation.refit_transport: auto` takes `cuda_ipc` wherever it applies and `host` elsewhere.
"""

from __future__ import annotations

from typing import Any

from trainer.interfaces import Components, LoadsSharedWeights, SharesWeightsOnGpu

TRANSPORTS = ("auto", "cuda_ipc", "host")


def refit_transport(cfg: Any) -> str:
    """`host` or `cuda_ipc` for this run, from `policy.generation.refit_transport` and the placement."""
    gen = cfg.policy.generation
    wanted = str(gen.refit_transport)
    if wanted not in TRANSPORTS:
        raise ValueError(f"policy.generation.refit_transport={wanted!r}: expected one of {', '.join(TRANSPORTS)}")
    blockers = []
    if int(cfg.cluster.gpus_per_node) <= 0:
        blockers.append("cluster.gpus_per_node is 0 (CUDA IPC needs GPUs)")
    if not gen.colocated.enabled:
        blockers.append("policy.generation.colocated.enabled is false (the engines are on other GPUs)")
    if gen.backend != "vllm":
        blockers.append(f"policy.generation.backend is {gen.backend!r} (only vllm engines load shared weights)")
    if wanted == "cuda_ipc" and blockers:
        raise ValueError(f"policy.generation.refit_transport=cuda_ipc cannot work here: {'; '.join(blockers)}")
    if wanted == "auto":
        return "host" if blockers else "cuda_ipc"
    return wanted


def refit_engines(components: Components, dtype: str) -> dict[str, float]:
    """Load the policy's current weights (in `dtype`) into every engine; the generation's timings and sizes."""
    policy, generation = components.policy, components.generation
    if components.refit_transport != "cuda_ipc":
        return generation.update_weights(policy.export_weights_blob(dtype))
    if not isinstance(policy, SharesWeightsOnGpu) or not isinstance(generation, LoadsSharedWeights):
        raise TypeError(
            f"refit_transport cuda_ipc needs a policy with share_weights ({type(policy).__name__}) and a generation "
            f"backend with update_weights_shared ({type(generation).__name__})"
        )
    offers = policy.share_weights(dtype)
    try:
        return generation.update_weights_shared(offers)
    finally:
        policy.release_shared_weights()
