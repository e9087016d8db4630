"""What the parity checks run on: a random Qwen3-shaped HF model, a `PolicyWorker` over it, rollout-shaped batches.

The benchmarks time the same objects (bench/gpu_bench.py, bench/multi_gpu_bench.py), so that what is timed is what
was checked. The worker is built the trainer's way (`PolicyWorker` + the HF <-> Megatron bridge), not a bench-only
path.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]

# Qwen3-1.7B's shape (hidden 2048, 16 heads / 8 KV heads of 128, FFN 6144, vocab 151,936, tied embeddings)
# with 16 of its 28 layers: 1.12 B parameters.
GPU_SHAPE = dict(
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=40960,
)
TINY_SHAPE = dict(
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
    max_position_embeddings=256,
)


def make_hf_model(out_dir: Path, shape: dict, device: torch.device, seed: int = 0) -> Path:
    """A random Qwen3 model saved as an HF directory (bf16 on GPU, fp32 on CPU).

    Norm weights are drawn around 1 (and the final norm scaled up) so that the logits are peaked (std ~3) like a
    trained model's, not near-uniform as at initialisation, where any log-prob comparison would pass trivially."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        **shape,
        tie_word_embeddings=True,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM(config).to(dtype)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1 + 0.3 * torch.randn(param.shape, generator=gen, device=device))
        model.model.norm.weight.mul_(3.0)
    model.save_pretrained(out_dir, safe_serialization=True)
    del model
    return out_dir


def free() -> None:
    """Return cached GPU memory once the caller has dropped its references."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def base_loss_cfg() -> dict:
    """The trainer's default `loss_fn` (configs/base.yaml): the checks train with the loss a run uses."""
    import yaml

    return yaml.safe_load((ROOT / "configs" / "base.yaml").read_text())["loss_fn"]


def backend_options(backend: str) -> dict:
    """Variant name -> megatron_cfg keys: sdpa (fused ops on CUDA), sdpa-unfused, local."""
    if backend == "sdpa-unfused":
        return {"attention_backend": "sdpa", "fused_ops": False}
    return {"attention_backend": backend, "fused_ops": None}


def policy_config(backend: str, gbs: int, mbs: int, precision: str = "bfloat16", tp: int = 1) -> dict:
    """A `policy` config: AdamW at a small constant lr, grad clipping at 1.0, TP `tp`."""
    return {
        "train_global_batch_size": gbs,
        "train_micro_batch_size": mbs,
        "logprob_batch_size": mbs,
        "precision": precision,
        "max_grad_norm": 1.0,
        "logits_only_where_loss": True,
        "pack_shared_prefixes": True,
        "pack_min_shared_tokens": 32,
        "offload_optimizer_for_generation": False,
        "megatron_cfg": {
            "tensor_model_parallel_size": tp,
            "pipeline_model_parallel_size": 1,
            "overlap_grad_reduce": None,
            "grad_reduce_bucket_mb": 40,
            **backend_options(backend),
            "optimizer": {
                "optimizer": "adam",
                "lr": 1e-6,
                "min_lr": 1e-7,
                "weight_decay": 0.01,
                "adam_beta1": 0.9,
                "adam_beta2": 0.999,
                "adam_eps": 1e-8,
            },
            "scheduler": {"lr_decay_style": "constant", "lr_warmup_iters": 0, "lr_decay_iters": None},
        },
    }


def make_worker(
    hf_dir: Path,
    backend: str,
    gbs: int,
    mbs: int,
    precision: str = "bfloat16",
    tp: int = 1,
    rank: int = 0,
    world_size: int = 1,
    master: tuple[str, int] | None = None,
):
    """A set-up `PolicyWorker` (collective when world_size > 1: every rank calls it with the same `master`)."""
    import functools

    from trainer.distributed import free_port
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import PolicyWorker

    worker = PolicyWorker(
        policy_config(backend, gbs, mbs, precision, tp),
        base_loss_cfg(),
        functools.partial(build_megatron_model, str(hf_dir)),
        export_hf_state_dict,
        total_steps=1000,
        rank=rank,
        world_size=world_size,
    )
    worker.setup(*(master or ("127.0.0.1", free_port())))
    return worker


def rollout_batch(n: int, seq: int, vocab: int, prompt: int, seed: int = 0) -> dict:
    """Full-length rollouts: `prompt` prompt tokens (not trained), the rest response tokens."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(n, seq)
    mask[:, :prompt] = 0
    return {
        "input_ids": torch.randint(1, vocab, (n, seq), generator=g),
        "input_lengths": torch.full((n,), seq),
        "loss_mask": mask,
        "advantages": torch.randn(n, generator=g),
    }
