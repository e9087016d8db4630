"""Expert trajectories: a row's ground-truth calls played in the environment as if the model had written them.

The expert's turns are the row's ground-truth tool calls followed by a short final answer
(`env_sim.agent.expert_turns`), executed against the environment like any rollout, so tool outputs are real and
the token bookkeeping is the one GRPO rollouts get (`trainer.rollout.collect_rollouts`). The sft stage trains on
them; GRPO's prompt selection scores them under the current policy.
"""

from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from infra.config import with_values
from trainer.interfaces import GenerationOutput, SamplingParams


class ExpertGeneration:
    """A generation backend (`trainer.interfaces.Generation`) that 'samples' given assistant texts, one per call
    (one episode at a time)."""

    def __init__(self, tokenizer, turns: Sequence[str], end_of_turn_id: int):
        self.tokenizer, self.turns, self.end_of_turn_id = tokenizer, list(turns), end_of_turn_id

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], sampling: SamplingParams) -> list[GenerationOutput]:
        if len(prompt_token_ids) != 1:
            raise ValueError("ExpertGeneration plays one episode at a time")
        text = self.turns.pop(0) if self.turns else "Done."
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.end_of_turn_id]
        limit = sampling.max_tokens_for(1)[0]
        finish = "stop"
        if len(ids) > limit:
            ids, finish = ids[:limit], "length"
        return [{"token_ids": ids, "logprobs": [0.0] * len(ids), "finish_reason": finish}]

    def update_weights(self, blob: bytes) -> dict[str, float]:
        raise NotImplementedError("expert trajectories are given texts; there are no weights to refit")

    def sleep(self) -> list[bool]:
        return [False]

    def wake_up(self) -> list[bool]:
        return [False]

    def shutdown(self) -> None:
        pass


def without_system_prompt(row: dict) -> dict:
    """The row with its system message left out of the input (the query and what follows remain)."""
    params = dict(row["responses_create_params"])
    items = params["input"]
    if isinstance(items, list):
        params["input"] = [item for item in items if item.get("role") not in ("system", "developer")]
    return {**row, "responses_create_params": params}


def expert_rollouts(rows: Sequence[dict], tokenizer, cfg: DictConfig, short_context: bool = False) -> list:
    """One expert trajectory per row, as GRPO rollouts (token ids + assistant loss mask); rows whose expert
    does not score 1.0 (which would mean the environment or the row is broken) are an error.

    `short_context`: without the system prompt and tool section (see `sft.short_context_epochs`)."""
    from env_sim.agent import expert_turns
    from trainer.generation import stop_token_ids
    from trainer.rollout import collect_rollouts

    if short_context:
        rows = [without_system_prompt(row) for row in rows]
        cfg = with_values(cfg, {"env": {"tool_scope": "none"}})
    end_of_turn = stop_token_ids(tokenizer, getattr(tokenizer, "name_or_path", None))[0]
    out = []
    for row in rows:
        turns = expert_turns(row, cfg.env.tool_format)
        rollout = collect_rollouts([row], ExpertGeneration(tokenizer, turns, end_of_turn), tokenizer, cfg, seed=0)[0]
        if rollout.reward != 1.0 and not rollout.truncated:
            raise ValueError(
                f"row id {row.get('id')}: the expert trajectory scored {rollout.reward} "
                f"(stop: {rollout.stop_reason}); the row's ground truth does not solve it"
            )
        out.append(rollout)
    return out
