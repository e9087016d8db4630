"""Informative prompt selection: spend generation on prompts whose rollout group will have mixed rewards.

A GRPO group whose rollouts all get the same reward has advantage 0 and teaches nothing; on the tiny demo only
~40% of groups are mixed, so most generation is spent on prompts the policy always or never solves. The
reference's dynamic sampling drops such groups *after* generating them. Here the policy predicts them before:
each candidate row's expert trajectory (its ground-truth calls played in the environment, as in sft) is scored
under the current policy, and its sequence probability q is a proxy for the chance p that one sampled rollout
succeeds. With G rollouts a group is mixed with probability 1 - q^G - (1 - q)^G; the candidates with the
highest value are kept. On the demo's 126 validation tasks, q in [0.02, 0.6) held 41 of the 49 tasks whose 8
samples had mixed rewards (docs/demo_tuning.md, session 5).

Costs one forward pass over the candidates' expert trajectories (no generation); the unselected candidates
are consumed like the selected ones, so an epoch takes `pool_factor` times fewer steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainer.batch import rollouts_to_batch
from trainer.interfaces import ExpertFn, Policy


def mixed_group_probability(success_prob: torch.Tensor, group_size: int) -> torch.Tensor:
    """P(a group of `group_size` independent rollouts has both a success and a failure)."""
    p = success_prob.clamp(0.0, 1.0).double()
    return (1.0 - p.pow(group_size) - (1.0 - p).pow(group_size)).clamp(min=0.0)


def sequence_probabilities(token_logprobs: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """exp(sum of the log-probs of the trained tokens) per row: the chance of sampling that trajectory."""
    return (token_logprobs.double() * (loss_mask != 0)).sum(dim=1).exp()


def pick_most_informative(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores (earlier rows win ties), returned in their original order."""
    if k >= len(scores):
        return list(range(len(scores)))
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


class ExpertScorer:
    """Scores candidate rows by the policy's probability of their expert trajectory.

    expert_fn(rows) -> rollouts with token_ids / loss_mask (e.g. `trainer.expert.expert_rollouts`); trajectories
    are cached by row id, since a row's expert trajectory never changes and rows recur across epochs.
    """

    def __init__(self, expert_fn: ExpertFn):
        self.expert_fn = expert_fn
        self._cache: dict[Any, Any] = {}

    def trajectories(self, rows: Sequence[dict]) -> list[Any]:
        missing = [row for row in rows if self._key(row) not in self._cache]
        if missing:
            for row, rollout in zip(missing, self.expert_fn(missing)):
                self._cache[self._key(row)] = rollout
        return [self._cache[self._key(row)] for row in rows]

    @staticmethod
    def _key(row: dict) -> Any:
        return row.get("id") if row.get("id") is not None else repr(row.get("responses_create_params"))

    def success_probabilities(self, rows: Sequence[dict], policy: Policy) -> torch.Tensor:
        experts = self.trajectories(rows)
        batch = rollouts_to_batch(experts, torch.zeros(len(experts)))
        logprobs = policy.get_logprobs(batch)
        return sequence_probabilities(logprobs, batch["loss_mask"])


def select_prompts(
    candidates: Sequence[dict], k: int, group_size: int, scorer: ExpertScorer, policy: Policy
) -> tuple[list[dict], torch.Tensor]:
    """The k candidates most likely to give a mixed group, and the success probabilities of those kept."""
    q = scorer.success_probabilities(candidates, policy)
    keep = pick_most_informative(mixed_group_probability(q, group_size), k)
    return [candidates[i] for i in keep], q[keep]
