"""What every tool-call format provides; hermes.py and nemotron.py fill it in.

A format owns three things a chat template and a tool parser own in a serving stack: the tool section of the
system prompt, the text of tool calls (for expert trajectories) and their parsing (for model output), and how tool
outputs are shown back to the model. `render_prompt` renders a whole conversation the way the model's chat template
would, for models that have no template of their own (the project's tiny model).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from env_sim.formats._common import ParsedTurn, arguments_text, tool_message
from env_sim.formats.compact import render_compact_tools


class ToolCallFormat(ABC):
    name: str = ""

    # --- tools into the system prompt -------------------------------------------------------------------------
    @abstractmethod
    def _tools_block(self, tool_lines: str, compact: bool) -> str:
        """The tool section around the already-rendered tool list."""

    @abstractmethod
    def _render_tool_list(self, tools: Sequence[dict[str, Any]]) -> str:
        """The full JSON tool list as the model's chat template writes it."""

    def render_tools(self, tools: Sequence[dict[str, Any]], compact: bool | str = False) -> str:
        """The tool section of the system prompt; `compact` (true or "signatures") swaps the JSON schemas for one
        line per tool."""
        listing = render_compact_tools(tools, compact) if compact else self._render_tool_list(tools)
        return self._tools_block(listing, bool(compact))

    def system_prompt(self, system_text: str, tools: Sequence[dict[str, Any]], compact: bool | str = False) -> str:
        """The row's system text followed by the tool section, as the chat template joins them."""
        block = self.render_tools(tools, compact=compact)
        return f"{system_text}\n\n{block}" if system_text else block

    # --- tool calls ------------------------------------------------------------------------------------------
    @abstractmethod
    def format_tool_calls(self, calls: Iterable[dict[str, Any]]) -> str:
        """Assistant text for calls [{"name", "arguments": dict | JSON str}]."""

    @abstractmethod
    def format_assistant(self, content: str, calls: Sequence[dict[str, Any]]) -> str:
        """A whole assistant turn: optional visible text followed by the calls."""

    @abstractmethod
    def parse(self, text: str) -> ParsedTurn:
        """Model text -> content, tool calls and errors. Never raises on any string."""

    # --- tool outputs ----------------------------------------------------------------------------------------
    @abstractmethod
    def format_tool_result(self, output_text: str) -> str:
        """How one tool output appears in the prompt text."""

    def tool_message(self, output_text: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
        """The chat message carrying one tool output (the template wraps it at render time)."""
        return tool_message(output_text, call_id, name)

    # --- whole conversation ----------------------------------------------------------------------------------
    @abstractmethod
    def render_prompt(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The conversation as prompt text, the way this model family's chat template renders it."""

    @staticmethod
    def _assistant_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
        """Calls attached to an assistant message as chat `tool_calls` (normalised to {name, arguments})."""
        calls = []
        for call in message.get("tool_calls") or []:
            function = call.get("function", call)
            calls.append({"name": function.get("name"), "arguments": arguments_text(function.get("arguments"))})
        return calls

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


__all__ = ["ToolCallFormat", "ParsedTurn"]
