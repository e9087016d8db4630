"""The GPU loop benchmark's idle accounting (bench/grpo_gpu_bench.py): nvidia-smi's timestamped samples parsed,
and a step's GPU-idle seconds attributed to the loop's phases from their wall-clock spans."""

from __future__ import annotations

import datetime as dt
import time

from bench.grpo_gpu_bench import idle_by_phase, parse_utilization
from trainer.grpo.loop import PhaseTimer


def test_parse_utilization_reads_timestamped_lines_and_skips_a_cut_one():
    text = "2026/12/02 17:22:43.100, 87\n2026/12/02 17:22:43.200, 0\n2026/12/02 17:22:4"
    got = parse_utilization(text)
    assert [u for _, u in got] == [87.0, 0.0]
    start = dt.datetime(2026, 12, 2, 17, 22, 43, 100000).timestamp()
    assert abs(got[0][0] - start) < 1e-6 and abs(got[1][0] - got[0][0] - 0.1) < 1e-6


def test_idle_is_attributed_to_the_phase_it_happened_in():
    spans = [("generation", 0.0, 10.0), ("policy_training", 10.0, 20.0), ("prepare_for_generation/refit", 21.0, 22.0)]
    times = [t / 10 for t in range(220)]  # every 100 ms
    samples = [50.0 if t < 10 else 100.0 if t < 20 else 0.0 for t in times]
    table = idle_by_phase(spans, times, samples)
    assert table["generation"]["idle_seconds"] == 5.0
    assert table["policy_training"]["idle_seconds"] == 0.0
    assert table["(between phases)"] == {"seconds": 1.0, "utilization": 0.0, "idle_seconds": 1.0}
    assert table["prepare_for_generation/refit"]["idle_seconds"] == 1.0
    assert list(table)[0] in ("generation", "policy_training")  # longest phases first


def test_phase_timer_keeps_wall_clock_spans_in_order():
    timer = PhaseTimer("timing/train")
    before = time.time()
    with timer("generation"):
        time.sleep(0.01)
    with timer("policy_training"):
        pass
    (first, s1, e1), (second, s2, e2) = timer.spans
    assert (first, second) == ("generation", "policy_training")
    assert before <= s1 < e1 <= s2 <= e2 and e1 - s1 >= 0.01
    assert abs(timer.times["timing/train/generation"] - (e1 - s1)) < 5e-3


def test_seeding_alternated_hands_the_rollouts_the_config_of_the_current_mode():
    from bench.grpo_gpu_bench import seeding_alternated
    from infra.config import load_config

    cfg = load_config("tiny_cpu", [])
    seen, mode = [], {"seeded": True}

    def rollout_fn(rows, generation, tokenizer, cfg_, seed):
        seen.append((cfg_.policy.generation.per_request_seeds, cfg_.grpo.num_prompts_per_step, seed))
        return []

    rollouts = seeding_alternated(rollout_fn, cfg, lambda: mode["seeded"])
    rollouts([], None, None, cfg, 3)
    mode["seeded"] = False
    rollouts([], None, None, cfg, 4)
    prompts = cfg.grpo.num_prompts_per_step
    assert seen == [(True, prompts, 3), (False, prompts, 4)]
