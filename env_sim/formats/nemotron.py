"""Nemotron-style tool calls, as NVIDIA Nemotron Nano v2's chat template and `nemotron_json` tool parser use them.

System prompt: the system text, a blank line, then the tools as a JSON list of function definitions inside
<AVAILABLE_TOOLS>[...]</AVAILABLE_TOOLS> with the template's instructions. Calls: one
`<TOOLCALL>[{"name": ..., "arguments": {...}}, ...]</TOOLCALL>` list per turn. Tool outputs: consecutive outputs
joined by ", " inside one `<TOOL_RESPONSE>[...]</TOOL_RESPONSE>` user turn.
Conversation markup: `<SPECIAL_10>System`, `<SPECIAL_11>User` / `<SPECIAL_11>Assistant`, `<SPECIAL_12>` ends a turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from env_sim.formats._common import ParsedTurn, arguments_text, parse_call_blocks
from env_sim.formats.base import ToolCallFormat
from env_sim.formats.responses import function_definition

CALL_OPEN = "<TOOLCALL>"
CALL_CLOSE = "</TOOLCALL>"

_TOOLS_INTRO = "You can use the following tools to assist the user if required:\n"
_TOOLS_INSTRUCTIONS = (
    "If you decide to call any tool(s), use the following format:\n"
    '<TOOLCALL>[{"name": "tool_name1", "arguments": "tool_args1"}, '
    '{"name": "tool_name2", "arguments": "tool_args2"}]</TOOLCALL>\n\n'
    "The user will execute tool-calls and return responses from tool(s) in this format:\n"
    '<TOOL_RESPONSE>[{"tool_response1"}, {"tool_response2"}]</TOOL_RESPONSE>\n\n'
    "Based on the tool responses, you can call additional tools if needed, correct tool calls if any errors are "
    "found, or just respond to the user."
)
_EXPECTED = 'write the calls as <TOOLCALL>[{"name": <function-name>, "arguments": <args-json-object>}]</TOOLCALL>'


class NemotronFormat(ToolCallFormat):
    name = "nemotron"

    def __init__(self, thinking: bool = False) -> None:
        # Nano v2 opens its answer with "<think>\n" when reasoning is on and with "<think></think>" when it is off.
        self.thinking = thinking

    def _render_tool_list(self, tools: Sequence[dict[str, Any]]) -> str:
        return ", ".join(json.dumps(function_definition(tool), ensure_ascii=False) for tool in tools)

    def _tools_block(self, tool_lines: str, compact: bool) -> str:
        if compact:
            listing = f"<AVAILABLE_TOOLS>\n{tool_lines}\n</AVAILABLE_TOOLS>\n\n"
        else:
            listing = f"<AVAILABLE_TOOLS>[{tool_lines}]</AVAILABLE_TOOLS>\n\n"
        return _TOOLS_INTRO + listing + _TOOLS_INSTRUCTIONS

    def format_tool_calls(self, calls: Iterable[dict[str, Any]]) -> str:
        entries = []
        for call in calls:
            name = json.dumps(str(call["name"]), ensure_ascii=False)[1:-1]
            entries.append(f'{{"name": "{name}", "arguments": {arguments_text(call.get("arguments"))}}}')
        return f"{CALL_OPEN}[{', '.join(entries)}]{CALL_CLOSE}" if entries else ""

    def format_assistant(self, content: str, calls: Sequence[dict[str, Any]]) -> str:
        content = (content or "").strip()
        calls_text = self.format_tool_calls(calls)
        if content and calls_text:
            return f"{content}\n\n{calls_text}"
        return content or calls_text

    def parse(self, text: str) -> ParsedTurn:
        return parse_call_blocks(text, CALL_OPEN, CALL_CLOSE, _EXPECTED, "Tool call block", label_entries=True)

    def format_tool_result(self, output_text: str) -> str:
        return f"<TOOL_RESPONSE>[{output_text}]</TOOL_RESPONSE>"

    def render_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        parts: list[str] = []
        body = list(messages)
        system = ""
        if body and body[0].get("role") == "system":
            system = (body.pop(0).get("content") or "").strip()
        parts.append(f"<SPECIAL_10>System\n{system}\n")
        for index, message in enumerate(body):
            role = message.get("role")
            content = message.get("content") or ""
            if role == "tool":
                if index == 0 or body[index - 1].get("role") != "tool":
                    parts.append("<SPECIAL_11>User\n<TOOL_RESPONSE>[")
                parts.append(content)
                if index == len(body) - 1 or body[index + 1].get("role") != "tool":
                    parts.append("]</TOOL_RESPONSE>\n")
                else:
                    parts.append(", ")
            elif role == "assistant":
                text = self.format_assistant(content, self._assistant_calls(message))
                parts.append(f"<SPECIAL_11>Assistant\n{text}\n<SPECIAL_12>\n")
            else:
                label = "User" if role == "user" else str(role).capitalize()
                parts.append(f"<SPECIAL_11>{label}\n{content.strip()}\n")
        if add_generation_prompt:
            parts.append("<SPECIAL_11>Assistant\n" + ("<think>\n" if self.thinking else "<think></think>"))
        return "".join(parts)
