"""A short rendering of tool schemas for tiny models (config `env.compact_tools`).

The 27 full JSON schemas are ~16k characters, more than a tiny model's context can spare. One line per tool keeps
what a call needs: the exact tool and parameter names, which parameters are required, integer parameters, allowed
values where the description enumerates them, and the tool's description:

    email_send_email(recipient*, subject*, body*): Sends an email to the specified recipient.
    analytics_create_plot(time_min*:date, time_max*:date, value_to_plot*=total_visits|..., plot_type*=bar|...): ...

Only the first sentence of each description is kept; LEGEND explains the notation. The shortest level,
`compact_tools: signatures`, drops the descriptions too (names and parameters carry what a tiny model can use),
about half the tokens again.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from env_sim.formats.responses import function_definition

# Descriptions that enumerate values: "One of: 'a', 'b'", "Available values are: 'a', 'b'", "Can be 'a', 'b' or 'c'".
_ENUM_HINT = re.compile(r"(one of|available values|can be)", re.IGNORECASE)
_QUOTED = re.compile(r"'([^']+)'")
# Formats worth keeping: a date or datetime pattern tells the model how to write the value.
_FORMAT = re.compile(r"(YYYY-MM-DD(?: HH:MM:SS)?)")
_SENTENCE_END = re.compile(r"\.(\s|$)")
LEGEND = (
    "One tool per line: name(parameters): description. * marks a required parameter, a|b the allowed values, "
    ":int an integer, :date YYYY-MM-DD, :datetime YYYY-MM-DD HH:MM:SS."
)


def _parameter(name: str, spec: dict[str, Any], required: bool) -> str:
    text = name + ("*" if required else "")
    description = str(spec.get("description", ""))
    if spec.get("type") == "integer":
        text += ":int"
    values = spec.get("enum")
    if not values and _ENUM_HINT.search(description):
        values = _QUOTED.findall(description)
    if values:
        text += "=" + "|".join(str(value) for value in values)
    else:
        date_format = _FORMAT.search(description)
        if date_format:
            text += ":datetime" if "HH" in date_format.group(1) else ":date"
    return text


def _first_sentence(description: str) -> str:
    match = _SENTENCE_END.search(description)
    return description[: match.end()].strip() if match else description.strip()


# short: the signatures level exists for tiny models, whose every prompt token costs CPU time
SIGNATURES_LEGEND = "Tools as name(parameters); * = required, a|b = allowed values."
SIGNATURES = "signatures"


def render_compact_tool(tool: dict[str, Any], descriptions: bool = True) -> str:
    function = function_definition(tool)
    parameters = function.get("parameters") or {}
    required = set(parameters.get("required") or [])
    rendered = [
        _parameter(name, spec or {}, name in required) for name, spec in (parameters.get("properties") or {}).items()
    ]
    signature = f"{function.get('name')}({', '.join(rendered)})"
    if not descriptions:
        return signature
    return f"{signature}: {_first_sentence(str(function.get('description', '')))}"


def render_compact_tools(tools: Sequence[dict[str, Any]], level: bool | str = True) -> str:
    """The legend line, then one line per tool in the given order; `level` "signatures" leaves out descriptions."""
    if level not in (True, SIGNATURES):
        raise ValueError(f"compact tool rendering level must be true or '{SIGNATURES}', got {level!r}")
    descriptions = level is True
    legend = LEGEND if descriptions else SIGNATURES_LEGEND
    return "\n".join([legend] + [render_compact_tool(tool, descriptions) for tool in tools])


def compact_level(value: Any) -> bool | str:
    """Normalise a config value of `env.compact_tools` (false | true | "signatures") for `Episode`."""
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value in (True, False, None) or value == SIGNATURES:
        return bool(value) if value != SIGNATURES else SIGNATURES
    raise ValueError(f"env.compact_tools must be false, true or '{SIGNATURES}', got {value!r}")
