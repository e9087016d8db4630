"""The policy as Ray actors (the production path): data parallelism over 2 CPU ranks (gloo) gives the same
update as 1 rank, and vLLM generates with the policy's weights after a refit (log-probs agree)."""

import pytest
import torch
from grpo_testlib import random_batch

from infra.config import load_config
from tests.grpo.toy import build_toy_gpt, export_toy_state_dict

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from trainer.distributed import init_ray

    init_ray(num_cpus=3)  # logical: a policy actor, the refitted engine and a fresh one
    yield ray
    ray.shutdown()


def _cfg(tmp_path, *extra):
    return load_config(
        "tiny_cpu",
        [
            f"run.root={tmp_path}",
            "policy.train_global_batch_size=8",
            "policy.train_micro_batch_size=2",
            "policy.logprob_batch_size=4",
            "policy.megatron_cfg.optimizer.lr=0.01",
            *extra,
        ],
    )


@pytest.mark.parametrize("overlap", [False, True], ids=["allreduce_after_backward", "overlapped_allreduce"])
def test_two_data_parallel_ranks_match_one(ray_session, tmp_path, overlap):
    """Also with the gradient all-reduce overlapped with the last backward (off by default on CPU)."""
    from trainer.policy.worker import PolicyGroup

    batch = random_batch(n=8, seed=11)
    results = {}
    for world in (1, 2):
        cfg = _cfg(tmp_path, f"policy.megatron_cfg.overlap_grad_reduce={str(overlap).lower()}")
        group = PolicyGroup(cfg, build_toy_gpt, export_toy_state_dict, total_steps=4, world_size=world)
        assert [info["dp_rank"] for info in group.setup_info] == list(range(world))
        prev = group.get_logprobs(batch)
        metrics = group.train(dict(batch, prev_logprobs=prev))
        results[world] = (prev, metrics, group.param_checksums(), group.get_logprobs(batch))
        group.shutdown()
    (prev1, m1, _, after1), (prev2, m2, sums2, after2) = results[1], results[2]
    assert torch.allclose(prev1, prev2, atol=1e-6)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5)
    assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    assert sums2[0] == pytest.approx(sums2[1], rel=1e-12)  # the replicas stay identical
    assert torch.allclose(after1, after2, atol=1e-4)
    assert not torch.allclose(after1, prev1, atol=1e-4)  # and the update did something


SMALL_TINY = {  # small sizes of the two project-built models (policy.tiny)
    "tiny-qwen3": {
        "hidden_size": 128,
        "num_layers": 2,
        "num_attention_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 256,
        "vocab_size": 512,
    },
    "tiny-nemotron-h": {  # the refit names are HF's backbone.* ones, which vLLM's NemotronH loader maps
        "hidden_size": 128,
        "pattern": "M*-M-",
        "num_attention_heads": 2,
        "num_kv_heads": 1,
        "intermediate_size": 256,
        "mamba_num_heads": 4,
        "mamba_head_dim": 64,
        "n_groups": 2,
        "ssm_state_size": 16,
        "vocab_size": 512,
    },
}


@pytest.mark.parametrize("model_name", list(SMALL_TINY))
def test_vllm_logprobs_match_policy_after_refit(ray_session, tmp_path, model_name):
    """Train the tiny HF model one step in the Megatron policy, refit vLLM, sample: the engine's log-probs of
    its own samples equal the policy's teacher-forced log-probs (both fp32 on CPU). For the hybrid NemotronH too
    (its Mamba layers: the chunked scan in the policy, vLLM's recurrent state while decoding)."""
    import functools

    from trainer.generation.vllm_worker import GenerationGroup
    from trainer.interfaces import Components, SamplingParams
    from trainer.models.hub import resolve_model
    from trainer.models.megatron_bridge import build_megatron_model, export_hf_state_dict
    from trainer.policy.worker import PolicyGroup
    from trainer.refit import refit_engines

    model_dir = resolve_model(
        model_name,
        tmp_path / "models",
        tiny_cfg=SMALL_TINY[model_name],
        seed=0,
        corpus_fn=lambda: ["hello world, call the email tool please"] * 50,
    )
    # engines in fp32 like the policy (tiny_cpu generates in bf16, ~4e-3 off in log-prob)
    cfg = _cfg(
        tmp_path,
        "policy.max_total_sequence_length=256",
        "policy.generation.max_new_tokens=16",
        "policy.generation.vllm_cfg.precision=float32",
    )
    policy = PolicyGroup(cfg, functools.partial(build_megatron_model, str(model_dir)), export_hf_state_dict, 4)
    engines = GenerationGroup(cfg, str(model_dir))
    try:
        batch = random_batch(n=8, seq=24, vocab=500, seed=2)
        policy.train(dict(batch, prev_logprobs=policy.get_logprobs(batch)))
        refit = engines.update_weights(policy.export_weights_blob("float32"))
        assert refit["refit_seconds"] > 0
        prompts = [[1, 5, 9, 20], [3, 3, 7, 100, 42]]
        sampling = SamplingParams(max_tokens=12, temperature=1.0, top_p=1.0, top_k=None, seed=5)
        outs = engines.generate(prompts, sampling)
        rows = [p + o["token_ids"] for p, o in zip(prompts, outs)]
        seq = max(map(len, rows))
        ids = torch.zeros(len(rows), seq, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        lp = policy.get_logprobs({"input_ids": ids, "input_lengths": torch.tensor([len(r) for r in rows])})
        for i, (p, o) in enumerate(zip(prompts, outs)):
            ours = lp[i, len(p) : len(p) + len(o["token_ids"])]
            theirs = torch.tensor(o["logprobs"])
            assert torch.allclose(ours, theirs, atol=2e-3), (ours, theirs)
        # and without the refit they would differ: the trained weights reached the engine
        fresh = GenerationGroup(cfg, str(model_dir))
        try:
            stale = fresh.generate(prompts, sampling)
            assert any(s["logprobs"] != o["logprobs"] for s, o in zip(stale, outs))
            # split placement's refit (a broadcast from policy rank 0 over a group of its own; gloo here) brings
            # the fresh engine exactly the weights the host path brought the first one
            broadcast = Components(policy, fresh, lambda *a: [], refit_transport="broadcast")
            sent = refit_engines(broadcast, "float32")
            assert broadcast.refit_group_joined and sent["refit_bytes"] > 0
            assert fresh.generate(prompts, sampling) == outs
        finally:
            fresh.shutdown()
    finally:
        engines.shutdown()
        policy.shutdown()
