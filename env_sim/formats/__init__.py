"""Tool-call formats: render tools into the prompt, write and parse tool calls, show tool outputs.

fmt = get_format("hermes")        # Qwen3 / Hermes <tool_call> blocks
fmt = get_format("nemotron")      # Nemotron Nano v2 <TOOLCALL> lists
turn = fmt.parse(model_text)      # ParsedTurn(content, tool_calls, errors, reasoning); never raises
"""

from __future__ import annotations

from env_sim.formats._common import ParsedTurn
from env_sim.formats.base import ToolCallFormat
from env_sim.formats.compact import render_compact_tools
from env_sim.formats.hermes import HermesFormat
from env_sim.formats.nemotron import NemotronFormat

FORMATS = {"hermes": HermesFormat, "nemotron": NemotronFormat}


def get_format(name: str | ToolCallFormat) -> ToolCallFormat:
    """A format by config name (`env.tool_format`); a format object is returned unchanged."""
    if isinstance(name, ToolCallFormat):
        return name
    try:
        return FORMATS[str(name).lower()]()
    except KeyError:
        raise ValueError(f"unknown tool format {name!r}; choose one of {sorted(FORMATS)}") from None


__all__ = [
    "get_format",
    "FORMATS",
    "ParsedTurn",
    "ToolCallFormat",
    "HermesFormat",
    "NemotronFormat",
    "render_compact_tools",
]
