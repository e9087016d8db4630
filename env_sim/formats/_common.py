"""Pieces shared by the tool-call formats: the parse result, reasoning stripping, call validation.

Parsing never raises on model text: whatever cannot be read becomes an entry of `ParsedTurn.errors`, which the
agent loop shows to the model as a tool message (the call is not executed).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)

# Longest slice of a broken call echoed back in an error, so a runaway generation cannot flood the context.
MAX_ERROR_SNIPPET = 200


@dataclass
class ParsedTurn:
    """One assistant generation split into visible text, tool calls and parse errors.

    tool_calls: [{"name": str, "arguments": str}] where arguments is the JSON text of the arguments object, or the
    model's own string when it wrote the arguments as a string (the executor then reports invalid JSON exactly
    as the reference does).
    """

    content: str
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    reasoning: str = ""


def split_reasoning(text: str) -> tuple[str, str]:
    """Return (reasoning, rest) with every <think>...</think> block removed from the visible text.

    A `</think>` without an opening tag (the generation prompt already opened the block, as Qwen3 thinking models and
    Nemotron do) closes reasoning that started at the beginning of the text. An unclosed `<think>` swallows the rest:
    a truncated thought is reasoning, never content or tool calls.
    """
    reasoning_parts: list[str] = []
    first_open = text.find(THINK_OPEN)
    first_close = text.find(THINK_CLOSE)
    if first_close != -1 and (first_open == -1 or first_close < first_open):
        reasoning_parts.append(text[:first_close])
        text = text[first_close + len(THINK_CLOSE):]

    def _collect(match: re.Match) -> str:
        reasoning_parts.append(match.group(1))
        return ""

    text = _THINK_BLOCK.sub(_collect, text)
    open_at = text.find(THINK_OPEN)
    if open_at != -1:
        reasoning_parts.append(text[open_at + len(THINK_OPEN):])
        text = text[:open_at]
    text = text.replace(THINK_CLOSE, "")
    return "\n".join(part.strip() for part in reasoning_parts if part.strip()), text


def snippet(text: str) -> str:
    """A short, single-line view of broken model text for an error message."""
    text = text.strip()
    if len(text) > MAX_ERROR_SNIPPET:
        text = text[:MAX_ERROR_SNIPPET] + "..."
    return text


def call_from_object(obj: Any, where: str) -> tuple[dict[str, str] | None, str | None]:
    """Validate one decoded call object {"name": str, "arguments": object|str} -> (call, None) or (None, error).

    Missing arguments mean no arguments ({}), as for a tool without parameters. Arguments given as a string are
    passed through untouched: they are the JSON text the executor decodes (and rejects with the reference's error
    when it is not JSON). Unknown tool names are not checked here: the reference executes them and reports the
    failure, and the verifier still sees the call.
    """
    if not isinstance(obj, dict):
        return None, f"{where}: expected a JSON object with \"name\" and \"arguments\", got {type(obj).__name__}."
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f"{where}: missing or empty \"name\" (a string naming one of the tools)."
    arguments = obj.get("arguments", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        arguments_text = arguments
    elif isinstance(arguments, dict):
        arguments_text = json.dumps(arguments, ensure_ascii=False)
    else:
        return None, (f"{where}: \"arguments\" of {name.strip()} must be a JSON object, "
                      f"got {type(arguments).__name__}.")
    return {"name": name.strip(), "arguments": arguments_text}, None


def decode_json(payload: str) -> tuple[Any, str | None]:
    """json.loads that reports failure as text instead of raising (payloads of any size and nesting)."""
    try:
        return json.loads(payload), None
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        return None, f"{type(error).__name__}: {error}"


def arguments_text(arguments: Any) -> str:
    """The JSON text of a call's arguments: a string is taken as already-encoded JSON."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments if arguments is not None else {}, ensure_ascii=False)


def tool_message(output_text: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """The chat message that carries one tool output back to the model (role "tool", as chat templates expect)."""
    message: dict[str, Any] = {"role": "tool", "content": output_text}
    if call_id is not None:
        message["tool_call_id"] = call_id
    if name is not None:
        message["name"] = name
    return message
