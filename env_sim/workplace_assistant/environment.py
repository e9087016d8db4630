"""The Workplace Assistant as an ``env_sim.environment.Environment``: what the agent loop, server and CLI use."""

from __future__ import annotations

from env_sim.environment import Environment
from env_sim.workplace_assistant.database import Database
from env_sim.workplace_assistant.tasks.commands import COMMANDS
from env_sim.workplace_assistant.tasks.rows import CATEGORY_PREFIX, ENVIRONMENT_NAME
from env_sim.workplace_assistant.tools import SHARED_TOOLKIT, TOOL_SCHEMAS, TOOLKIT_NAMES, call_tool
from env_sim.workplace_assistant.verify import verify


def domain_tools(tools: list[dict], category: str) -> list[dict]:
    """The tools of the row's own domain plus the company directory, in the row's order (``tool_scope="domain"``:
    a much shorter prompt for tiny models; every tool still executes). Categories without one domain keep all."""
    domain = category.removeprefix(CATEGORY_PREFIX)
    if domain not in TOOLKIT_NAMES:
        return list(tools)
    keep = (domain + "_", SHARED_TOOLKIT + "_")
    return [
        tool for tool in tools if str(tool.get("name") or tool.get("function", {}).get("name", "")).startswith(keep)
    ]


ENVIRONMENT = Environment(
    name=ENVIRONMENT_NAME,
    tool_schemas=TOOL_SCHEMAS,
    fresh_state=Database.fresh,
    call_tool=call_tool,
    verify=verify,
    domain_tools=domain_tools,
    commands=COMMANDS,
)
