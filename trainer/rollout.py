"""Multi-turn rollouts: many `env_sim` episodes driven by one batched `generate` call per turn.

Token bookkeeping is the point of this module. A rollout's `token_ids` are built incrementally and never
re-tokenised from model text:

* turn 1 starts from the chat template's rendering of the episode's messages (system prompt with the tool section,
  user query) plus the generation prompt;
* the model's tokens are appended exactly as sampled (loss mask 1, with vLLM's log-probs);
* the tool outputs are appended as the tokens of the text the chat template adds for them: we render the
  conversation up to and including the new assistant message, cut it right after that message's end-of-turn
  marker, render it again with the tool messages and the next generation prompt, and tokenise the difference
  (loss mask 0). This is checked: the second rendering must start with the first. When a template rewrites
  earlier turns (e.g. templates that drop old reasoning), the check fails; we then render the tool messages
  after a fixed two-message stub conversation instead and count a `template_fallbacks` on the rollout. If even
  that does not give a clean prefix the template is unusable for multi-turn training and we raise.

A generation cut by `max_new_tokens` ends its episode (the reference agent's behaviour: its calls are recorded,
not executed). A conversation that reaches `policy.max_total_sequence_length` stops where it is; both are flagged
`truncated`, and the verifier scores whatever calls the episode made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.interfaces import Generation, GenerationOutput, SamplingParams

log = logging.getLogger(__name__)

_STUB_MESSAGES = [{"role": "user", "content": "."}, {"role": "assistant", "content": "."}]


@dataclass
class Rollout:
    row_id: Any
    category: str | None
    token_ids: list[int]
    loss_mask: list[int]  # 1 on tokens the policy generated, 0 on prompt/tool/template tokens
    generation_logprobs: list[float]  # per token, aligned with token_ids; 0 where loss_mask is 0
    reward: float
    verdict: dict[str, Any]  # verifier diagnostics
    num_turns: int
    truncated: bool
    stop_reason: str | None
    prompt_length: int  # tokens before the first generated token
    num_generated_tokens: int
    num_parse_errors: int = 0
    template_fallbacks: int = 0
    function_calls: list[dict[str, str]] = field(default_factory=list)


def episode_options(env_cfg) -> dict[str, Any]:
    """Episode keyword arguments from the `env` config section (one place, so rollouts, sft and sanity agree)."""
    from env_sim.formats.compact import compact_level

    return {
        "max_steps": int(env_cfg.max_steps),
        "compact_tools": compact_level(env_cfg.compact_tools),
        "tool_scope": str(env_cfg.tool_scope),
    }


class _ChatRenderer:
    """The tokenizer's chat template as text, plus the end-of-turn marker used to cut renderings."""

    def __init__(self, tokenizer, stop_ids: Sequence[int]):
        self.tokenizer = tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat template; multi-turn rollouts need one")
        self.end_of_turn_id = int(stop_ids[0])
        self.end_of_turn = tokenizer.convert_ids_to_tokens(self.end_of_turn_id)

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool) -> str:
        # tools=None: the episode already wrote the tool section into the system message (env.tool_format /
        # env.compact_tools), the way the model's own template would.
        return self.tokenizer.apply_chat_template(
            list(messages), tools=None, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _through_last_turn_end(self, text: str) -> str | None:
        cut = text.rfind(self.end_of_turn)
        return None if cut < 0 else text[: cut + len(self.end_of_turn)]

    def continuation(self, before: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> tuple[str, bool]:
        """Template text that follows the end-of-turn marker of `before`'s last (assistant) message when `new`
        messages are added, up to the next generation prompt. Returns (text, used_fallback)."""
        for used_fallback, base in ((False, list(before)), (True, _STUB_MESSAGES)):
            prefix = self._through_last_turn_end(self.render(base, add_generation_prompt=False))
            full = self.render(base + list(new), add_generation_prompt=True)
            if prefix is not None and full.startswith(prefix):
                return full[len(prefix) :], used_fallback
        raise RuntimeError(
            "the chat template does not render tool messages as an append-only continuation of "
            f"the conversation (end-of-turn marker {self.end_of_turn!r}); multi-turn token "
            "bookkeeping is impossible with it"
        )


@dataclass
class _Live:
    """One episode and its token bookkeeping while it runs."""

    index: int
    episode: Any
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    prompt_length: int
    truncated: bool = False
    stop_reason: str | None = None
    template_fallbacks: int = 0
    finished: bool = False

    def append(self, ids: Sequence[int], mask: int, logprobs: Sequence[float] | None = None) -> None:
        self.token_ids.extend(int(t) for t in ids)
        self.loss_mask.extend([mask] * len(ids))
        self.logprobs.extend(list(logprobs) if logprobs is not None else [0.0] * len(ids))


def request_seed(seed: int, index: int, turn: int) -> int:
    """A per-request sampling seed that depends only on (run seed, episode index, turn)."""
    return (int(seed) * 1_000_003 + index * 7_919 + turn) % (2**31 - 1)


def collect_rollouts(
    rows: Sequence[Mapping[str, Any]], generation: Generation, tokenizer, cfg, seed: int
) -> list[Rollout]:
    """Play one episode per row to the end and return the rollouts in row order (a `trainer.interfaces.RolloutFn`).

    generation: a `trainer.interfaces.Generation` (`trainer.generation.make_generation`). cfg keys:
    env.{tool_format, max_steps, compact_tools, tool_scope}, policy.{max_total_sequence_length, generation.*}.
    """
    from env_sim.agent import Episode
    from trainer.generation import stop_token_ids

    max_total = int(cfg.policy.max_total_sequence_length)
    stop_ids = stop_token_ids(tokenizer, getattr(tokenizer, "name_or_path", None))
    if not stop_ids:
        raise ValueError("no end-of-turn token: neither generation_config.json eos_token_id nor tokenizer.eos_token")
    renderer = _ChatRenderer(tokenizer, stop_ids)
    sampling = SamplingParams.from_config(cfg, stop_token_ids=stop_ids)
    max_new = sampling.max_tokens_for(1)[0]  # policy.generation.max_new_tokens, capped per turn below
    seeded = bool(cfg.policy.generation.per_request_seeds)

    live: list[_Live] = []
    encoded: dict[str, list[int]] = {}  # a GRPO group's rows share one prompt: tokenised once, not G times
    for index, row in enumerate(rows):
        episode = Episode(dict(row), cfg.env.tool_format, **episode_options(cfg.env))
        text = renderer.render(episode.messages, add_generation_prompt=True)
        prompt = encoded.get(text) or encoded.setdefault(text, renderer.encode(text))
        state = _Live(index, episode, [], [], [], len(prompt))
        state.append(prompt, 0)
        if len(prompt) >= max_total:
            log.warning(
                "row %s: prompt of %d tokens does not fit policy.max_total_sequence_length=%d",
                row.get("id"),
                len(prompt),
                max_total,
            )
            state.truncated, state.stop_reason, state.finished = True, "prompt_too_long", True
        live.append(state)

    turn = 0
    while True:
        active = [s for s in live if not s.finished]
        if not active:
            break
        outputs = generation.generate(
            [s.token_ids for s in active],
            sampling.replace(
                max_tokens=[min(max_new, max_total - len(s.token_ids)) for s in active],
                seeds=[request_seed(seed, s.index, turn) if seeded else None for s in active],
            ),
        )
        for state, out in zip(active, outputs):
            _apply_generation(state, out, renderer, stop_ids, max_total)
        turn += 1

    rollouts = []
    for state in live:
        episode = state.episode
        verdict = episode.finish()
        rollouts.append(
            Rollout(
                row_id=episode.row.get("id"),
                category=episode.row.get("category"),
                token_ids=state.token_ids,
                loss_mask=state.loss_mask,
                generation_logprobs=state.logprobs,
                reward=float(verdict.reward),
                verdict=dict(getattr(verdict, "diagnostics", {}) or {}),
                num_turns=episode.steps,
                truncated=state.truncated,
                stop_reason=state.stop_reason or episode.stop_reason,
                prompt_length=state.prompt_length,
                num_generated_tokens=sum(state.loss_mask),
                num_parse_errors=episode.num_parse_errors,
                template_fallbacks=state.template_fallbacks,
                function_calls=list(episode.function_calls),
            )
        )
    return rollouts


def _apply_generation(
    state: _Live, out: GenerationOutput, renderer: _ChatRenderer, stop_ids: Sequence[int], max_total: int
) -> None:
    """Append one generation to the rollout, step the episode, then append the tool outputs' tokens."""
    episode = state.episode
    ids = list(out["token_ids"])
    logprobs = list(out["logprobs"])
    if len(logprobs) != len(ids):
        raise RuntimeError(f"generation returned {len(ids)} tokens but {len(logprobs)} log-probs")
    state.append(ids, 1, logprobs)
    ended_by_stop = bool(ids) and ids[-1] in stop_ids and out.get("finish_reason") == "stop"
    text_ids = ids[:-1] if ended_by_stop else ids
    text = renderer.tokenizer.decode(text_ids, skip_special_tokens=True)
    cut_off = not ended_by_stop
    before = len(episode.messages)
    episode.step(text, truncated=cut_off)
    if cut_off:
        state.truncated = True
        state.stop_reason = "max_total_sequence_length" if len(state.token_ids) >= max_total else "max_new_tokens"
    if episode.done:
        state.finished = True
        return
    if ids[-1] != renderer.end_of_turn_id:
        # stopped on another stop id (e.g. <|endoftext|>): close the turn the way the template writes it
        state.append([renderer.end_of_turn_id], 0)
    text_after, used_fallback = renderer.continuation(episode.messages[: before + 1], episode.messages[before + 1 :])
    state.template_fallbacks += int(used_fallback)
    suffix = renderer.encode(text_after)
    if len(state.token_ids) + len(suffix) + 1 > max_total:
        # no room for the tool outputs plus at least one generated token: stop here
        state.truncated, state.stop_reason, state.finished = True, "max_total_sequence_length", True
        return
    state.append(suffix, 0)
