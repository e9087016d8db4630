"""Hermes-style tool calls, as Qwen3's chat template and vLLM's `hermes` parser use them.

System prompt: the system text, a blank line, then a `# Tools` section with one chat-completions tool schema per
line inside <tools></tools>. Calls: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`, one block per
call. Tool outputs: `<tool_response>\\n...\\n</tool_response>` inside a user turn (consecutive outputs share it).
Conversation markup: ChatML (`<|im_start|>role\\n...<|im_end|>\\n`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from env_sim.formats._common import ParsedTurn, arguments_text, parse_call_blocks
from env_sim.formats.base import ToolCallFormat
from env_sim.formats.responses import tool_to_chat

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}'
    "\n</tool_call>"
)
_EXPECTED = 'write each call as <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>'


class HermesFormat(ToolCallFormat):
    name = "hermes"

    def _render_tool_list(self, tools: Sequence[dict[str, Any]]) -> str:
        # The chat template writes each tool with `tojson` (json.dumps defaults: ", " and ": ", no key sorting).
        return "\n".join(json.dumps(tool_to_chat(tool), ensure_ascii=False) for tool in tools)

    def _tools_block(self, tool_lines: str, compact: bool) -> str:
        return _TOOLS_HEADER + tool_lines + _TOOLS_FOOTER

    def format_tool_calls(self, calls: Iterable[dict[str, Any]]) -> str:
        blocks = []
        for call in calls:
            name = json.dumps(str(call["name"]), ensure_ascii=False)[1:-1]
            blocks.append(
                f'{CALL_OPEN}\n{{"name": "{name}", "arguments": {arguments_text(call.get("arguments"))}}}\n{CALL_CLOSE}'
            )
        return "\n".join(blocks)

    def format_assistant(self, content: str, calls: Sequence[dict[str, Any]]) -> str:
        calls_text = self.format_tool_calls(calls)
        if content and calls_text:
            return f"{content}\n{calls_text}"
        return content or calls_text

    def parse(self, text: str) -> ParsedTurn:
        return parse_call_blocks(text, CALL_OPEN, CALL_CLOSE, _EXPECTED, "Tool call", label_entries=False)

    def format_tool_result(self, output_text: str) -> str:
        return f"<tool_response>\n{output_text}\n</tool_response>"

    def render_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        parts: list[str] = []
        for index, message in enumerate(messages):
            role = message.get("role")
            content = message.get("content") or ""
            if role == "tool":
                if index == 0 or messages[index - 1].get("role") != "tool":
                    parts.append("<|im_start|>user")
                parts.append("\n" + self.format_tool_result(content))
                if index == len(messages) - 1 or messages[index + 1].get("role") != "tool":
                    parts.append("<|im_end|>\n")
            elif role == "assistant":
                text = self.format_assistant(content, self._assistant_calls(message))
                parts.append(f"<|im_start|>assistant\n{text}<|im_end|>\n")
            else:
                parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)
