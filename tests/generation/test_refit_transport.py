"""trainer.refit and trainer.generation.shared_weights on CPU: which transport a config gets (and a clear error
where CUDA IPC cannot work), the packing of a state dict into one buffer and back, and the driver's refit
sequence (share, load, release even when the load fails). The CUDA IPC path itself runs in tests/gpu."""

from __future__ import annotations

import pickle

import pytest
import torch

from infra.config import load_config
from tests.protocol_check import protocol_problems
from trainer.generation.shared_weights import ALIGN_BYTES, TensorSpec, pack_state, unpack_state
from trainer.interfaces import (
    BroadcastsWeights,
    Components,
    LoadsSharedWeights,
    ReceivesWeightBroadcast,
    SharesWeightsOnGpu,
)
from trainer.refit import refit_engines, refit_transport


def _cfg(*overrides: str):
    return load_config("tiny_cpu", list(overrides))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ([], "host"),  # CPU
        (["cluster.gpus_per_node=8"], "cuda_ipc"),  # colocated on GPUs
        (["cluster.gpus_per_node=8", "policy.generation.colocated.enabled=false"], "broadcast"),  # split GPUs
        (["cluster.gpus_per_node=8", "policy.generation.backend=torch"], "host"),
        (["cluster.gpus_per_node=8", "policy.generation.refit_transport=host"], "host"),
        (["policy.generation.refit_transport=broadcast"], "broadcast"),  # gloo on CPU
    ],
)
def test_auto_takes_cuda_ipc_where_policy_and_engines_share_gpus_and_broadcast_where_not(overrides, expected):
    assert refit_transport(_cfg(*overrides)) == expected


def test_cuda_ipc_asked_where_it_cannot_work_names_every_reason():
    cfg = _cfg("policy.generation.refit_transport=cuda_ipc", "policy.generation.colocated.enabled=false")
    with pytest.raises(ValueError) as err:
        refit_transport(cfg)
    assert "cluster.gpus_per_node is 0" in str(err.value) and "colocated.enabled is false" in str(err.value)
    with pytest.raises(ValueError, match="expected one of auto, cuda_ipc, broadcast, host"):
        refit_transport(_cfg("policy.generation.refit_transport=nccl"))
    with pytest.raises(ValueError, match="backend is 'torch'"):
        refit_transport(_cfg("policy.generation.refit_transport=broadcast", "policy.generation.backend=torch"))


def test_the_recipes_refit_by_cuda_ipc():
    for recipe in ("grpo_workplace_assistant_qwen3_4binstruct", "grpo_workplace_assistant_nemotron_nano_v2_9b"):
        assert refit_transport(load_config(recipe)) == "cuda_ipc", recipe


def test_pack_and_unpack_round_trip_mixed_dtypes_and_shapes():
    state = {
        "model.embed_tokens.weight": torch.randn(37, 16, dtype=torch.bfloat16),
        "model.norm.weight": torch.randn(16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 16).t(),  # not contiguous
        "scalar": torch.tensor(3.5, dtype=torch.float16),
    }
    buffer, specs = pack_state(state)
    assert buffer.dtype == torch.uint8 and buffer.dim() == 1
    assert all(spec.offset % ALIGN_BYTES == 0 for spec in specs)
    assert [s.name for s in specs] == list(state)
    out = dict(unpack_state(buffer, specs))
    for name, tensor in state.items():
        assert out[name].dtype == tensor.dtype and out[name].shape == tensor.shape
        assert torch.equal(out[name], tensor), name
    # views, not copies: what the engine loads is the shared memory itself
    out["model.norm.weight"].zero_()
    assert torch.count_nonzero(dict(unpack_state(buffer, specs))["model.norm.weight"]) == 0
    # the specs travel to the engine's workers (pickled by Ray and vLLM's collective_rpc)
    assert pickle.loads(pickle.dumps(specs)) == specs


def test_unpack_refuses_specs_past_the_buffer():
    buffer, specs = pack_state({"w": torch.ones(4)})
    with pytest.raises(ValueError, match="'big' ends at byte"):
        unpack_state(buffer, (*specs, TensorSpec("big", "float32", (1000,), 0)))
    with pytest.raises(ValueError, match="empty"):
        pack_state({})


class _Policy:
    def __init__(self, log):
        self.log = log

    def export_weights_blob(self, dtype="bfloat16"):
        self.log.append(("blob", dtype))
        return b"bytes"

    def share_weights(self, dtype="bfloat16"):
        self.log.append(("share", dtype))
        return {"GPU-1": "offer"}

    def release_shared_weights(self):
        self.log.append(("release",))


class _BroadcastPolicy(_Policy):
    def rendezvous_address(self):
        self.log.append(("address",))
        return "10.0.0.1", 1234

    def join_weight_broadcast(self, meet):
        self.log.append(("policy joins", meet.host, meet.port, meet.world_size))
        return [_ready(None)]

    def weights_for_broadcast(self, dtype="bfloat16"):
        self.log.append(("pack", dtype))
        return ("specs",), 64

    def send_weights(self):
        self.log.append(("send",))
        return [_ready(None)]


class _Generation:
    def __init__(self, log, fail=False):
        self.log, self.fail = log, fail

    def update_weights(self, blob):
        self.log.append(("load blob", blob))
        return {"refit_seconds": 0.0}

    def update_weights_shared(self, offers):
        self.log.append(("load shared", dict(offers)))
        if self.fail:
            raise RuntimeError("engine died")
        return {"refit_seconds": 0.0}


class _BroadcastGeneration(_Generation):
    broadcast_members = 3  # e.g. an engine of TP 2 and one of TP 1

    def join_weight_broadcast(self, host, port, world_size):
        self.log.append(("engines join", host, port, world_size))
        return [_ready(0)]

    def receive_weights(self, specs, nbytes):
        self.log.append(("receive", specs, nbytes))
        return [_ready(0.5), _ready(0.25)]


def _ready(value):
    import ray

    return ray.put(value)


def test_broadcast_refit_makes_its_group_once_then_packs_and_sends_each_time():
    import ray

    from trainer.distributed import init_ray

    init_ray(num_cpus=1)
    try:
        log: list = []
        components = Components(
            _BroadcastPolicy(log), _BroadcastGeneration(log), lambda *a: [], refit_transport="broadcast"
        )
        first = refit_engines(components, "bfloat16")
        refit_engines(components, "bfloat16")
    finally:
        ray.shutdown()
    joins = [("address",), ("policy joins", "10.0.0.1", 1234, 4), ("engines join", "10.0.0.1", 1234, 4)]
    each = [("pack", "bfloat16"), ("receive", ("specs",), 64), ("send",)]
    assert log == joins + each + each  # the group (policy rank 0 + 3 engine workers) is made at the first refit only
    assert first["refit_bytes"] == 64 and first["refit_engine_seconds_max"] == 0.5


def test_refit_sequence_per_transport_and_release_on_failure():
    log: list = []
    refit_engines(Components(_Policy(log), _Generation(log), lambda *a: []), "float32")
    assert log == [("blob", "float32"), ("load blob", b"bytes")]
    log.clear()
    refit_engines(Components(_Policy(log), _Generation(log), lambda *a: [], refit_transport="cuda_ipc"), "bfloat16")
    assert log == [("share", "bfloat16"), ("load shared", {"GPU-1": "offer"}), ("release",)]
    log.clear()
    failing = Components(_Policy(log), _Generation(log, fail=True), lambda *a: [], refit_transport="cuda_ipc")
    with pytest.raises(RuntimeError, match="engine died"):
        refit_engines(failing, "bfloat16")
    assert log[-1] == ("release",)  # the policy's buffer is freed even when an engine fails


def test_cuda_ipc_with_a_backend_that_cannot_load_shared_weights_says_which():
    class BlobOnly:
        def update_weights(self, blob):
            return {}

    with pytest.raises(TypeError, match="BlobOnly"):
        refit_engines(Components(_Policy([]), BlobOnly(), lambda *a: [], refit_transport="cuda_ipc"), "bfloat16")


def test_the_ray_policy_and_vllm_group_implement_the_shared_weights_protocols():
    from trainer.generation.vllm_worker import GenerationGroup, VllmEngine
    from trainer.policy.worker import PolicyGroup, PolicyWorker

    assert protocol_problems(PolicyGroup, SharesWeightsOnGpu) == []
    assert protocol_problems(GenerationGroup, LoadsSharedWeights) == []
    assert protocol_problems(PolicyGroup, BroadcastsWeights) == []
    assert protocol_problems(GenerationGroup, ReceivesWeightBroadcast) == []
    for cls, methods in (
        (PolicyWorker, ("share_weights", "release_shared_weights", "join_weight_broadcast", "send_weights")),
        (VllmEngine, ("update_weights_shared", "join_weight_broadcast", "update_weights_broadcast")),
    ):
        assert [m for m in methods if not callable(getattr(cls, m, None))] == [], cls
