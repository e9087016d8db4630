"""Informative prompt selection (grpo.prompt_selection): the scores, the pick, and the trainer generating only
for the candidates the policy ranks most likely to give a mixed group."""

import pytest
import torch
from grpo_testlib import toy_cfg

from tests.grpo.toy import ToyRollout, ToySampler, build_toy_gpt, export_toy_state_dict, make_toy_rollout_fn, toy_rows
from trainer.batch import rollouts_to_batch
from trainer.grpo.loop import GRPOTrainer, PromptLoader, total_training_steps
from trainer.grpo.selection import ExpertScorer, mixed_group_probability, pick_most_informative, sequence_probabilities
from trainer.interfaces import Components
from trainer.policy.worker import InProcessPolicy


def test_mixed_group_probability_peaks_between_sure_failure_and_sure_success():
    p = torch.tensor([0.0, 0.05, 0.3, 0.5, 0.9, 1.0])
    mixed = mixed_group_probability(p, 8)
    assert mixed[0] == 0 and mixed[-1] == 0
    assert mixed[3] == pytest.approx(1 - 2 * 0.5**8)
    assert mixed[2] > mixed[4] > mixed[1]  # 0.3 beats 0.9 beats 0.05 for groups of 8
    assert mixed_group_probability(torch.tensor([0.5]), 2).item() == pytest.approx(0.5)


def test_sequence_probability_counts_only_trained_tokens():
    logprobs = torch.tensor([[-5.0, -0.1, -0.2], [-9.0, -1.0, 0.0]])
    mask = torch.tensor([[0, 1, 1], [0, 0, 1]])
    assert sequence_probabilities(logprobs, mask).tolist() == pytest.approx([torch.exp(torch.tensor(-0.3)).item(), 1.0])


def test_pick_keeps_the_k_best_in_original_order_and_breaks_ties_by_position():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2])
    assert pick_most_informative(scores, 3) == [1, 2, 3]
    assert pick_most_informative(scores, 1) == [1]
    assert pick_most_informative(scores, 9) == [0, 1, 2, 3, 4]


def test_scorer_plays_each_row_once():
    calls = []

    def expert_fn(rows):
        calls.append([r["id"] for r in rows])
        return [f"trajectory {r['id']}" for r in rows]

    scorer = ExpertScorer(expert_fn)
    rows = [{"id": i} for i in range(4)]
    assert scorer.trajectories(rows[:3]) == ["trajectory 0", "trajectory 1", "trajectory 2"]
    assert scorer.trajectories(rows[1:]) == ["trajectory 1", "trajectory 2", "trajectory 3"]
    assert calls == [[0, 1, 2], [3]]


def toy_expert_fn(rows):
    """The toy task's expert: answer the target token (reward 1 iff the response contains 7)."""
    return [ToyRollout(row, row["prompt_tokens"], [7, 7], [0.0, 0.0], 1.0) for row in rows]


def test_trainer_generates_only_for_the_selected_candidates(tmp_path):
    cfg = toy_cfg(
        tmp_path,
        "grpo.prompt_selection.pool_factor=2",
        "grpo.max_num_steps=3",
        "grpo.val_at_start=false",
        "grpo.max_num_epochs=1",
    )
    train_rows = toy_rows(16, seed=0)
    policy = InProcessPolicy(cfg, build_toy_gpt, export_toy_state_dict, total_training_steps(cfg, len(train_rows)))
    toy_rollouts = make_toy_rollout_fn(max_new_tokens=4)
    seen = []

    def rollout_fn(rows, generation, tokenizer, cfg_, seed):
        seen.append([r["id"] for r in rows])
        return toy_rollouts(rows, generation, tokenizer, cfg_, seed)

    components = Components(policy=policy, generation=ToySampler(), rollout_fn=rollout_fn, expert_fn=toy_expert_fn)
    trainer = GRPOTrainer(cfg, train_rows, toy_rows(4, seed=1), components, refit_dtype="float32", echo=False)
    # what the selection must keep at step 1: score the first 8 candidates with the untrained policy
    first_pool = [row["id"] for row in PromptLoader(train_rows, 8, int(cfg.grpo.seed)).next_batch()]
    experts = toy_expert_fn([train_rows[i] for i in first_pool])
    batch = rollouts_to_batch(experts, torch.zeros(8))
    q = sequence_probabilities(policy.get_logprobs(batch), batch["loss_mask"])
    expected = [first_pool[i] for i in pick_most_informative(mixed_group_probability(q, 4), 4)]

    result = trainer.fit()
    assert total_training_steps(cfg, 16) == 2 and result.step == 2  # 8 candidates a step: an epoch is 2 steps
    train_calls = [ids for ids in seen if len(ids) == 4 * 4]
    assert len(train_calls) == 2
    assert train_calls[0] == [i for i in expected for _ in range(4)]
    assert set(train_calls[1]).isdisjoint(train_calls[0])
    rows = [r for r in trainer.metrics.read() if "train:selection_candidates" in r]
    assert [r["train:selection_candidates"] for r in rows] == [8, 8]
    assert all(0 < r["train:selection_expert_prob_mean"] < 1 for r in rows)
    assert all(r["timing/train/prompt_selection"] > 0 for r in rows)


def test_selection_without_expert_trajectories_is_a_config_error(tmp_path):
    cfg = toy_cfg(tmp_path, "grpo.prompt_selection.pool_factor=2")
    policy = InProcessPolicy(cfg, build_toy_gpt, export_toy_state_dict, 10)
    with pytest.raises(ValueError, match="expert_fn"):
        GRPOTrainer(
            cfg,
            toy_rows(8),
            toy_rows(2),
            Components(policy=policy, generation=ToySampler(), rollout_fn=make_toy_rollout_fn()),
            echo=False,
        )
    with pytest.raises(ValueError, match="pool_factor must be >= 1"):
        total_training_steps(toy_cfg(tmp_path, "grpo.prompt_selection.pool_factor=0.5"), 8)
