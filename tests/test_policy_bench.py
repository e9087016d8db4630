"""bench/policy_bench.py on a small batch: it trains the real tiny policy both ways and reports the packing."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_policy_bench_writes_both_timings_and_fewer_packed_tokens(tmp_path):
    from bench import policy_bench

    out = tmp_path / "policy.json"
    assert (
        policy_bench.main(["--groups", "2", "--per-group", "3", "--repeats", "1", "--no-doc", "--output", str(out)])
        == 0
    )
    result = json.loads(out.read_text())
    assert result["step_seconds_packed"] > 0 and result["step_seconds_unpacked"] > 0
    # two prompts of ~300 tokens, each computed once instead of three times
    assert result["tokens_packed"] < result["tokens_unpacked"] - 2 * result["mean_prompt_tokens"]
    config, rows = policy_bench.doc_rows(result)
    assert "2 prompts x 3 rollouts" in config and len(rows) == 3
