"""Runs inside each vLLM worker process (named by `worker_extension_cls`): in-place weight refit.

Tensors cannot travel through vLLM's `collective_rpc` pickling ("cannot pickle memoryview"), so the driver
sends one safetensors blob (bytes) and each worker decodes it and hands the HF-named tensors to
`model_runner.reload_weights`, which loads them into the live parameters (fusing q/k/v, gate/up and TP-sharding
as vLLM's own loader does). Plain `model.load_weights` fails after start-up ("no attribute weight_loader").
Kept import-light: vLLM imports this module in every worker.
"""
from __future__ import annotations


class WeightRefitExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `model_runner`)."""

    def refit_from_safetensors(self, blob: bytes) -> int:
        """Load all tensors of `blob` into the running model; returns how many tensors were loaded."""
        from safetensors.torch import load

        weights = load(blob)
        # the worker's own reload_weights (when present) sets vLLM's current-config context around the runner's
        reload = getattr(self, "reload_weights", None) or self.model_runner.reload_weights
        reload(weights_iterator=iter(list(weights.items())))
        return len(weights)
