"""Generation backends with one API (`trainer.interfaces.Generation`): `generate(prompt_token_ids, SamplingParams)
-> [{token_ids, logprobs, finish_reason}]`, `update_weights(safetensors_blob) -> {refit_seconds, ...}`, `sleep()`,
`wake_up()`, `shutdown()`.

`policy.generation.backend`: `vllm` (vLLM engines as Ray actors: `vllm_worker.GenerationGroup`) or `torch`
(a plain transformers model in this process: `torch_backend.TorchGeneration`). Nothing heavy is imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.interfaces import Generation

BACKENDS = ("vllm", "torch")


def make_generation(cfg, model_dir: str, num_engines: int | None = None, placement: Any = None) -> Generation:
    """The backend named by `policy.generation.backend`, loaded with the weights in `model_dir`.

    The vLLM backend needs Ray (`trainer.distributed.init_ray()`) first.
    """
    backend = str(cfg.policy.generation.backend)
    if backend == "vllm":
        from trainer.generation.vllm_worker import GenerationGroup

        return GenerationGroup(cfg, str(model_dir), num_engines, placement=placement)
    if backend == "torch":
        from trainer.generation.torch_backend import TorchGeneration

        return TorchGeneration.from_cfg(cfg, str(model_dir))
    raise ValueError(f"policy.generation.backend={backend!r}: choose one of {BACKENDS}")


def stop_token_ids(tokenizer, model_dir: str | None = None) -> list[int]:
    """Token ids that end an assistant turn: the generation config's eos ids, else the tokenizer's eos."""
    ids: list[int] = []
    if model_dir is not None:
        import json
        from pathlib import Path

        path = Path(model_dir) / "generation_config.json"
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids = [eos] if isinstance(eos, int) else list(eos or [])
    if not ids and tokenizer.eos_token_id is not None:
        ids = [tokenizer.eos_token_id]
    return ids
