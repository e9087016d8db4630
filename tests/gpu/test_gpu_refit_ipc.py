"""On a CUDA device: the colocated refit by CUDA IPC, through Ray actors placed on one GPU as a run places them.

A policy rank and a vLLM engine share the GPU (one bundle). After a training step the engine is refit by CUDA IPC
and samples; refit again from the same weights by the host path it samples the very same tokens with the very same
log-probs (both paths load identical bf16 weights); the policy's teacher-forced log-probs of those samples agree
within bf16 tolerance; and the samples differ from the ones the engine drew before the refit (the trained weights
arrived). Also: the policy's shared buffer is freed afterwards. Runs where CUDA is: `pytest tests/gpu -m gpu`.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TINY = {
    "hidden_size": 256,
    "num_layers": 2,
    "num_attention_heads": 4,
    "num_kv_heads": 2,
    "head_dim": 64,
    "intermediate_size": 512,
    "vocab_size": 1024,
    "max_position_embeddings": 1024,
}


def _pad(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
    return {"input_ids": ids, "input_lengths": torch.tensor([len(r) for r in rows])}


def test_cuda_ipc_refit_loads_what_the_host_path_loads(tmp_path):
    import dataclasses

    import ray

    from infra.config import load_config
    from tests.grpo.grpo_testlib import random_batch
    from trainer.distributed import init_ray
    from trainer.generation.vllm_worker import GenerationGroup
    from trainer.interfaces import Components, SamplingParams
    from trainer.models.hub import resolve_model
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import PolicyGroup
    from trainer.ray_placement import reserve_for
    from trainer.refit import refit_engines

    model_dir = resolve_model(
        "tiny-qwen3", tmp_path / "models", tiny_cfg=TINY, seed=0, corpus_fn=lambda: ["send the email to bob"] * 50
    )
    cfg = load_config(
        "tiny_cpu",
        [
            f"run.root={tmp_path}",
            "cluster.gpus_per_node=1",
            "policy.precision=bfloat16",
            "policy.generation.vllm_cfg.precision=bfloat16",
            "policy.generation.vllm_cfg.block_size=null",
            "policy.generation.vllm_cfg.cpu_reserved_cores=null",
            "policy.generation.vllm_cfg.gpu_memory_utilization=0.2",
            "policy.generation.vllm_cfg.enable_sleep_mode=true",
            "policy.max_total_sequence_length=512",
            "policy.train_global_batch_size=8",
            "policy.train_micro_batch_size=4",
            "policy.megatron_cfg.optimizer.lr=0.01",
        ],
    )
    init_ray()
    placement = reserve_for(cfg)
    policy = PolicyGroup(
        cfg, functools.partial(build_megatron_model, str(model_dir)), export_hf_state_dict, 4, placement=placement
    )
    engines = GenerationGroup(cfg, str(model_dir), placement=placement)
    components = Components(policy, engines, lambda *a: [], placement=placement, refit_transport="cuda_ipc")
    try:
        prompts = [[1, 5, 9, 20], [3, 3, 7, 100, 42], [11, 12]]
        sampling = SamplingParams(max_tokens=24, temperature=1.0, top_p=1.0, top_k=None, seed=5)
        before = engines.generate(prompts, sampling)
        batch = random_batch(n=8, seq=32, vocab=1000, seed=2)
        engines.sleep()  # as the loop does: the engine frees its memory while the policy trains
        policy.train(dict(batch, prev_logprobs=policy.get_logprobs(batch)))
        engines.wake_up()
        ipc = refit_engines(components, "bfloat16")
        after_ipc = engines.generate(prompts, sampling)
        assert ipc["refit_bytes"] > 0
        host = refit_engines(dataclasses.replace(components, refit_transport="host"), "bfloat16")
        after_host = engines.generate(prompts, sampling)
        print(f"refit seconds: CUDA IPC {ipc['refit_seconds']:.3f}, host {host['refit_seconds']:.3f}")
        assert [o["token_ids"] for o in after_ipc] == [o["token_ids"] for o in after_host]
        assert [o["logprobs"] for o in after_ipc] == [o["logprobs"] for o in after_host]
        assert [o["token_ids"] for o in after_ipc] != [o["token_ids"] for o in before]
        rows = [p + o["token_ids"] for p, o in zip(prompts, after_ipc)]
        lp = policy.get_logprobs(_pad(rows))
        diffs = torch.cat(
            [
                lp[i, len(p) : len(p) + len(o["token_ids"])].float() - torch.tensor(o["logprobs"])
                for i, (p, o) in enumerate(zip(prompts, after_ipc))
            ]
        ).abs()
        assert diffs.mean() < 0.05 and diffs.max() < 0.5, diffs  # bf16 weights on both sides, different kernels
    finally:
        components.shutdown()
        ray.shutdown()
