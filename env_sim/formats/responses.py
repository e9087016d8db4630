"""Responses-API items <-> chat messages, and Responses tool schemas -> chat-completions tool schemas.

The reference agent records an episode as Responses-API output items (`message`, `function_call`,
`function_call_output`, `reasoning`); chat templates consume chat messages. The mapping follows NeMo Gym's
converter for vLLM models: consecutive function calls join one assistant message as `tool_calls`; each
`function_call_output` becomes a `tool` message; reasoning summaries become `<think>` text in the assistant turn;
a tool schema loses `type`/`strict` and is nested under `function`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def tool_to_chat(tool: dict[str, Any]) -> dict[str, Any]:
    """One Responses-API tool ({type, name, description, parameters, strict}) in chat-completions shape."""
    if "function" in tool and isinstance(tool["function"], dict):
        return {"type": "function", "function": dict(tool["function"])}
    function = {key: value for key, value in tool.items() if key not in ("type", "strict")}
    return {"type": "function", "function": function}


def tools_to_chat(tools: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tool_to_chat(tool) for tool in tools]


def function_definition(tool: dict[str, Any]) -> dict[str, Any]:
    """The bare function definition {name, description, parameters} of a tool in either shape."""
    return tool_to_chat(tool)["function"]


def _content_text(content: Any) -> str:
    """Text of a message's content: a string, or a list of text parts (input_text / output_text / text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    raise ValueError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def items_to_messages(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses-API input/output items -> chat messages (what a chat template renders)."""
    messages: list[dict[str, Any]] = []
    content_buffer = ""
    calls_buffer: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal content_buffer, calls_buffer
        if content_buffer or calls_buffer:
            message: dict[str, Any] = {"role": "assistant", "content": content_buffer}
            if calls_buffer:
                message["tool_calls"] = calls_buffer
            messages.append(message)
        content_buffer, calls_buffer = "", []

    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"item {index}: expected an object, got {type(item).__name__}")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            text = _content_text(item.get("content"))
            if role == "assistant":
                content_buffer += text
            elif role in ("user", "system", "developer"):
                flush()
                messages.append({"role": role, "content": text})
            else:
                raise ValueError(f"item {index}: unknown message role {role!r}")
        elif kind == "reasoning":
            texts = [part.get("text", "") for part in item.get("summary") or [] if isinstance(part, dict)]
            content_buffer += "".join(f"<think>{text}</think>" for text in texts if text)
        elif kind == "function_call":
            calls_buffer.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
        elif kind == "function_call_output":
            flush()
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
        else:
            raise ValueError(f"item {index}: unsupported item type {kind!r}")
    flush()
    return messages


class ItemIds:
    """Deterministic ids for the items of one episode (reproducible logs; uniqueness within an episode suffices)."""

    def __init__(self) -> None:
        self._count = 0

    def next(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}_{self._count:06d}"


def message_item(text: str, item_id: str, role: str = "assistant") -> dict[str, Any]:
    """An assistant output message in the shape the reference records."""
    return {
        "id": item_id,
        "content": [{"annotations": [], "text": text, "type": "output_text", "logprobs": []}],
        "role": role,
        "status": "completed",
        "type": "message",
    }


def function_call_item(name: str, arguments: str, call_id: str, item_id: str) -> dict[str, Any]:
    return {
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
        "type": "function_call",
        "id": item_id,
        "status": "completed",
    }


def function_call_output_item(call_id: str | None, output: str) -> dict[str, Any]:
    """`call_id` None: a tool message without `tool_call_id` (tool_message leaves it out when it has none)."""
    return {"call_id": call_id, "output": output, "type": "function_call_output", "id": None, "status": None}


def reasoning_item(texts: list[str], item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "reasoning",
        "status": "completed",
        "summary": [{"text": text, "type": "summary_text"} for text in texts],
    }


def messages_to_items(messages: Iterable[dict[str, Any]], ids: ItemIds | None = None) -> list[dict[str, Any]]:
    """Chat messages -> Responses-API items (assistant turns split into reasoning, message and function calls)."""
    ids = ids or ItemIds()
    items: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        if role in ("user", "system", "developer"):
            items.append({"role": role, "content": _content_text(message.get("content")), "type": "message"})
        elif role == "assistant":
            content = _content_text(message.get("content"))
            thoughts = [text for text in _THINK_BLOCK.findall(content) if text]
            content = _THINK_BLOCK.sub("", content)
            if thoughts:
                items.append(reasoning_item(thoughts, ids.next("rs")))
            calls = message.get("tool_calls") or []
            if content or not (calls or thoughts):
                items.append(message_item(content, ids.next("msg")))
            for call in calls:
                function = call.get("function", call)
                call_id = call.get("id") or ids.next("call")
                items.append(
                    function_call_item(function.get("name"), function.get("arguments"), call_id, ids.next("fc"))
                )
        elif role == "tool":
            items.append(function_call_output_item(message.get("tool_call_id"), _content_text(message.get("content"))))
        else:
            raise ValueError(f"message {index}: unknown role {role!r}")
    return items
