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
        text = text[first_close + len(THINK_CLOSE) :]

    def _collect(match: re.Match) -> str:
        reasoning_parts.append(match.group(1))
        return ""

    text = _THINK_BLOCK.sub(_collect, text)
    open_at = text.find(THINK_OPEN)
    if open_at != -1:
        reasoning_parts.append(text[open_at + len(THINK_OPEN) :])
        text = text[:open_at]
    text = text.replace(THINK_CLOSE, "")
    return "\n".join(part.strip() for part in reasoning_parts if part.strip()), text


def snippet(text: str) -> str:
    """A short, single-line view of broken model text for an error message."""
    text = text.strip()
    if len(text) > MAX_ERROR_SNIPPET:
        text = text[:MAX_ERROR_SNIPPET] + "..."
    return text


def call_from_object(obj: Any, where: str) -> tuple[dict[str, str], None] | tuple[None, str]:
    """Validate one decoded call object {"name": str, "arguments": object|str} -> (call, None) or (None, error).

    Missing arguments mean no arguments ({}), as for a tool without parameters. Arguments given as a string are
    passed through untouched: they are the JSON text the executor decodes (and rejects with the reference's error
    when it is not JSON). Unknown tool names are not checked here: the reference executes them and reports the
    failure, and the verifier still sees the call.
    """
    if not isinstance(obj, dict):
        return None, f'{where}: expected a JSON object with "name" and "arguments", got {type(obj).__name__}.'
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, f'{where}: missing or empty "name" (a string naming one of the tools).'
    arguments = obj.get("arguments", {})
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        arguments_text = arguments
    elif isinstance(arguments, dict):
        arguments_text = json.dumps(arguments, ensure_ascii=False)
    else:
        return None, (f'{where}: "arguments" of {name.strip()} must be a JSON object, got {type(arguments).__name__}.')
    return {"name": name.strip(), "arguments": arguments_text}, None


_DECODER = json.JSONDecoder()


@dataclass
class Block:
    """One tagged call block found in model text: its span and decoded payload (or why it did not decode)."""

    start: int
    end: int
    payload: str
    value: Any = None
    error: str | None = None


def scan_blocks(text: str, open_tag: str, close_tag: str) -> list[Block]:
    """Find `open_tag JSON close_tag` blocks. The JSON is decoded where the block opens, so a closing tag inside a
    JSON string does not cut the call short; the last block may be left open (generation stopped at the closing
    tag or ran out of tokens). A block whose JSON does not decode runs to the next closing tag and carries the
    error."""
    blocks: list[Block] = []
    position = 0
    while True:
        start = text.find(open_tag, position)
        if start == -1:
            return blocks
        body = start + len(open_tag)
        first = body
        while first < len(text) and text[first].isspace():
            first += 1
        try:
            value, stop = _DECODER.raw_decode(text, first)
            after = stop
            while after < len(text) and text[after].isspace():
                after += 1
            if text.startswith(close_tag, after):
                blocks.append(Block(start, after + len(close_tag), text[body:after], value))
                position = after + len(close_tag)
                continue
            if after == len(text):
                blocks.append(Block(start, after, text[body:after], value))
                return blocks
            error = f"unexpected text after the JSON value at char {stop - first}"
        except (ValueError, RecursionError) as problem:
            error = f"{type(problem).__name__}: {problem}"
        close = text.find(close_tag, body)
        end = len(text) if close == -1 else close + len(close_tag)
        payload = text[body:] if close == -1 else text[body:close]
        blocks.append(Block(start, end, payload, error=error))
        position = end


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


def parse_call_blocks(
    text: Any, open_tag: str, close_tag: str, expected: str, block_label: str, label_entries: bool
) -> ParsedTurn:
    """Model text -> ParsedTurn for formats that wrap calls in open/close tags (one object or a list per block).

    Never raises: an unreadable block or entry becomes an error naming it ("<block_label> N" or, with
    `label_entries`, "<block_label> N, entry M"), and the text outside the blocks is the content."""
    if not isinstance(text, str):
        return ParsedTurn(content="", errors=[f"Model output must be text, got {type(text).__name__}."])
    reasoning, visible = split_reasoning(text)
    calls: list[dict[str, str]] = []
    errors: list[str] = []
    content_parts: list[str] = []
    position = 0
    for number, block in enumerate(scan_blocks(visible, open_tag, close_tag), start=1):
        content_parts.append(visible[position : block.start])
        position = block.end
        where = f"{block_label} {number}"
        if block.error is not None:
            errors.append(f"{where} could not be parsed ({block.error}); {expected}. Got: {snippet(block.payload)}")
            continue
        entries = block.value if isinstance(block.value, list) else [block.value]
        for entry_number, obj in enumerate(entries, start=1):
            call, problem = call_from_object(obj, f"{where}, entry {entry_number}" if label_entries else where)
            if call is None:
                errors.append(f"{problem} Got: {snippet(block.payload)}")
            else:
                calls.append(call)
    content_parts.append(visible[position:])
    content = "".join(content_parts).replace(close_tag, "").strip()
    return ParsedTurn(content=content, tool_calls=calls, errors=errors, reasoning=reasoning)
