"""The agent loop of the reference's simple agent, step-wise so a trainer can batch one model call over many
live episodes.

Reference semantics (NeMo Gym `simple_agent`, max_steps 6):
- each step is one model call on the original input plus everything produced so far;
- a response cut off at the token limit ends the episode at once (its calls are recorded but not executed; the
  verifier still replays them, since it replays every function call of the response);
- a response with no function call ends the episode if it has an assistant message (a reasoning-only response does
  not: the model is called again);
- otherwise every call is executed in order (arguments that are not JSON give the reference's error output) and
  its output is appended; the episode ends when `max_steps` model calls have been made, after executing the last
  step's calls;
- the verifier sees every function call of the episode, failed and read-only ones included.

One deliberate addition: tool calls the format parser cannot read are not executed; the model gets a tool message
with the parse error instead (and the episode continues while steps remain), so a policy can learn the format from
its mistakes. `parse_error_feedback=False` restores the reference's behaviour, where unreadable calls are plain text.

Each episode owns a fresh state of its environment (`env_sim.environment.Environment`, picked by the row's
`environment_name`): episodes never share state.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from env_sim.environment import Environment, get_environment
from env_sim.execute import execute_call
from env_sim.formats import ToolCallFormat, get_format
from env_sim.formats._common import ParsedTurn, split_reasoning
from env_sim.formats.responses import (
    ItemIds,
    function_call_item,
    function_call_output_item,
    items_to_messages,
    message_item,
    reasoning_item,
)

DEFAULT_MAX_STEPS = 6

Model = Callable[[list[dict[str, Any]]], str]


TOOL_SCOPES = ("all", "domain", "none")


def tools_in_scope(env: Environment, tools: list[dict], category: str, scope: str = "all") -> list[dict]:
    """The tools a prompt shows. "all": every tool the row lists (the reference). "domain": the environment's
    choice for the row's category (`Environment.domain_tools`; the workplace assistant keeps the row's domain and
    the company directory): a much shorter prompt for tiny models (config `env.tool_scope`); every tool still
    executes, so a call outside the scope is not an error. "none": no tool section at all (the sft stage's
    short-context phase)."""
    if scope not in TOOL_SCOPES:
        raise ValueError(f"tool scope must be one of {TOOL_SCOPES}, got {scope!r}")
    if scope == "all":
        return list(tools)
    if scope == "none":
        return []
    return env.domain_tools(tools, category)


def parse_error_output(error: str) -> str:
    """The tool-message text for a call that could not be parsed (same shape as the reference's argument error)."""
    return json.dumps({"error": f"Invalid tool call: {error}"})


class Episode:
    """One task played against its own fresh environment state.

    Parameters
    ----------
    row: a dataset row (the workplace assistant's: env_sim.workplace_assistant.tasks.rows).
    fmt: a format name ("hermes" | "nemotron") or format object.
    max_steps: the most model calls (reference: 6).
    compact_tools: render the tool schemas one line per tool (tiny models only): true, or "signatures" (no
        descriptions).
    parse_error_feedback: show unparsable calls to the model as errors (True) or treat them as text (reference).
    tool_scope: which tools the prompt shows: "all" (reference), "domain" (the row's domain and the company
        directory; tiny models only) or "none" (no tool section); see tools_in_scope.
    env: the environment (object or name); default: the one the row's `environment_name` names.
    """

    def __init__(
        self,
        row: dict[str, Any],
        fmt: str | ToolCallFormat = "hermes",
        max_steps: int = DEFAULT_MAX_STEPS,
        compact_tools: bool | str = False,
        parse_error_feedback: bool = True,
        tool_scope: str = "all",
        env: str | Environment | None = None,
    ) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        self.row = row
        self.env = get_environment(env or row.get("environment_name"))
        self.fmt = get_format(fmt)
        self.max_steps = max_steps
        self.parse_error_feedback = parse_error_feedback
        params = row["responses_create_params"]
        tools = tools_in_scope(
            self.env, params.get("tools") or self.env.tool_schemas, str(row.get("category", "")), tool_scope
        )
        self.tools = tools
        raw_input = params["input"]
        if isinstance(raw_input, str):
            raw_input = [{"role": "user", "content": raw_input}]
        messages = items_to_messages(raw_input)
        self.messages: list[dict[str, Any]] = self._with_tools(messages, tools, compact_tools) if tools else messages
        self.prompt_length = len(self.messages)
        self.state = self.env.fresh_state()
        self.function_calls: list[dict[str, str]] = []
        self.steps = 0
        self.done = False
        self.stop_reason: str | None = None
        self.num_parse_errors = 0
        self.verdict = None
        self._items: list[dict[str, Any]] = []
        self._ids = ItemIds()
        self._pending_call_ids: list[str] = []

    def _with_tools(
        self, messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]], compact: bool | str
    ) -> list[dict[str, Any]]:
        """Put the rendered tool section into the system message (creating one when the row has none)."""
        messages = [dict(message) for message in messages]
        if messages and messages[0]["role"] == "system":
            messages[0]["content"] = self.fmt.system_prompt(messages[0]["content"], tools, compact=compact)
        else:
            messages.insert(0, {"role": "system", "content": self.fmt.render_tools(tools, compact=compact)})
        return messages

    # --- the loop --------------------------------------------------------------------------------------------
    def prompt(self, add_generation_prompt: bool = True) -> str:
        """The conversation so far as prompt text in this format's chat markup."""
        return self.fmt.render_prompt(self.messages, add_generation_prompt=add_generation_prompt)

    def step(self, model_text: str, truncated: bool = False) -> ParsedTurn:
        """Apply one model response: parse it, execute its calls, append the assistant and tool messages.

        `truncated`: the generation hit its token limit (the reference's incomplete response) - the episode ends
        and the parsed calls are recorded without being executed.
        """
        if self.done:
            raise RuntimeError(f"episode of row {self.row.get('id')} is finished ({self.stop_reason}); no more steps")
        if not isinstance(model_text, str):
            model_text = "" if model_text is None else str(model_text)
        self.steps += 1
        turn = self.fmt.parse(model_text)
        if not self.parse_error_feedback and turn.errors:
            # Reference behaviour: a response with any unreadable call has no calls at all, only text.
            _, visible = split_reasoning(model_text)
            turn = ParsedTurn(content=visible.strip(), tool_calls=[], errors=[], reasoning=turn.reasoning)
        self.messages.append({"role": "assistant", "content": model_text})
        has_message = self._record_assistant(turn)

        if truncated:
            self.function_calls.extend({"name": c["name"], "arguments": c["arguments"]} for c in turn.tool_calls)
            return self._stop(turn, "truncated")
        if not turn.tool_calls and not turn.errors:
            if has_message:
                return self._stop(turn, "no_tool_calls")
        self._execute(turn)
        if self.steps >= self.max_steps:
            return self._stop(turn, "max_steps")
        return turn

    def _record_assistant(self, turn: ParsedTurn) -> bool:
        """Append the response's output items the way the reference's model server builds them."""
        if turn.reasoning:
            self._items.append(reasoning_item([turn.reasoning], self._ids.next("rs")))
        has_message = bool(turn.content) or not (turn.reasoning or turn.tool_calls)
        if has_message:
            self._items.append(message_item(turn.content, self._ids.next("msg")))
        turn_ids = []
        for call in turn.tool_calls:
            call_id = self._ids.next("call")
            turn_ids.append(call_id)
            self._items.append(function_call_item(call["name"], call["arguments"], call_id, self._ids.next("fc")))
        self._pending_call_ids = turn_ids
        return has_message

    def _execute(self, turn: ParsedTurn) -> None:
        for call, call_id in zip(turn.tool_calls, self._pending_call_ids):
            output = execute_call(self.env.call_tool, self.state, call["name"], call["arguments"])
            self.function_calls.append({"name": call["name"], "arguments": call["arguments"]})
            self._items.append(function_call_output_item(call_id, output))
            self.messages.append(self.fmt.tool_message(output, call_id=call_id, name=call["name"]))
        for error in turn.errors:
            self.num_parse_errors += 1
            self.messages.append(self.fmt.tool_message(parse_error_output(error)))

    def _stop(self, turn: ParsedTurn, reason: str) -> ParsedTurn:
        self.done = True
        self.stop_reason = reason
        return turn

    # --- results ---------------------------------------------------------------------------------------------
    def response_items(self) -> list[dict[str, Any]]:
        """The episode's Responses-API output items (reasoning, message, function_call, function_call_output)."""
        return [dict(item) for item in self._items]

    def response(self) -> dict[str, Any]:
        """A minimal Responses-API response object carrying the output items (what /verify receives)."""
        return {
            "id": f"resp_episode_{self.row.get('id')}",
            "object": "response",
            "output": self.response_items(),
            "incomplete_details": {"reason": "max_output_tokens"} if self.stop_reason == "truncated" else None,
            "parallel_tool_calls": False,
            "status": "completed",
        }

    def finish(self):
        """Score the episode: every function call against the row's ground truth. Ends the episode."""
        if not self.done:
            self.done = True
            self.stop_reason = self.stop_reason or "finished_early"
        ground_truth = self.row.get("ground_truth") or []
        if isinstance(ground_truth, str):
            ground_truth = json.loads(ground_truth)
        self.verdict = self.env.verify(self.function_calls, ground_truth)
        return self.verdict

    @property
    def reward(self) -> float | None:
        return None if self.verdict is None else self.verdict.reward

    def summary(self) -> dict[str, Any]:
        """What a trainer logs per episode."""
        return {
            "id": self.row.get("id"),
            "category": self.row.get("category"),
            "steps": self.steps,
            "stop_reason": self.stop_reason,
            "num_function_calls": len(self.function_calls),
            "num_parse_errors": self.num_parse_errors,
            "reward": self.reward,
        }


def run_episode(
    model: Model,
    row: dict[str, Any],
    fmt: str | ToolCallFormat = "hermes",
    max_steps: int = DEFAULT_MAX_STEPS,
    **episode_options: Any,
) -> Episode:
    """Play one row to the end with `model(messages) -> text` and score it; returns the finished Episode
    (`ep.verdict`, `ep.reward`, `ep.response_items()`)."""
    episode = Episode(row, fmt, max_steps=max_steps, **episode_options)
    while not episode.done:
        episode.step(model(list(episode.messages)))
    episode.finish()
    return episode


def scripted_model(turns: Sequence[str]) -> Model:
    """A policy that answers with the given texts in order, then with a plain final message."""
    remaining = list(turns)

    def model(messages: list[dict[str, Any]]) -> str:
        return remaining.pop(0) if remaining else "Done."

    return model


def expert_turns(
    row: dict[str, Any], fmt: str | ToolCallFormat = "hermes", calls_per_turn: int = 0, final_answer: str = "Done."
) -> list[str]:
    """Assistant texts that perform the row's ground truth: the calls (all in one turn when calls_per_turn is 0,
    else that many per turn) followed by a final answer. For warm-start trajectories and tests."""
    fmt = get_format(fmt)
    calls = list(row.get("ground_truth") or [])
    size = calls_per_turn or max(len(calls), 1)
    turns = [fmt.format_assistant("", calls[start : start + size]) for start in range(0, len(calls), size)]
    return turns + [final_answer]
