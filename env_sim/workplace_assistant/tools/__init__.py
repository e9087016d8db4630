"""The 27 Workplace Assistant tools: schemas in the reference's order and the name -> method registry.

A tool named ``<toolkit>_<method>`` runs ``<Toolkit>Tool(db).<method>(**kwargs)``; every toolkit
class wraps one ``Database`` and keeps the reference's class, method and parameter names.
"""

from __future__ import annotations

from typing import NamedTuple

from env_sim.tools import analytics, calendar, company_directory, customer_relationship_manager, email
from env_sim.tools import project_management


class ToolEntry(NamedTuple):
    toolkit: type
    method: str


# (name prefix, toolkit class, schemas) in the order get_tools() registers them.
_TOOLKITS = [
    ("company_directory", company_directory.CompanyDirectoryTool, company_directory.SCHEMAS),
    ("email", email.EmailTool, email.SCHEMAS),
    ("calendar", calendar.CalendarTool, calendar.SCHEMAS),
    ("analytics", analytics.AnalyticsTool, analytics.SCHEMAS),
    ("project_management", project_management.ProjectManagementTool, project_management.SCHEMAS),
    ("customer_relationship_manager", customer_relationship_manager.CustomerRelationshipManagerTool,
     customer_relationship_manager.SCHEMAS),
]

TOOL_SCHEMAS: list[dict] = [schema for _, _, schemas in _TOOLKITS for schema in schemas]
TOOL_NAMES: list[str] = [schema["name"] for schema in TOOL_SCHEMAS]

REGISTRY: dict[str, ToolEntry] = {}
for _prefix, _cls, _schemas in _TOOLKITS:
    for _schema in _schemas:
        _method = _schema["name"][len(_prefix) + 1:]
        assert callable(getattr(_cls, _method, None)), _schema["name"]
        REGISTRY[_schema["name"]] = ToolEntry(_cls, _method)

# Tools that can change one of the five compared tables (WorkBench's "side-effect" tools).
WRITE_TOOLS = frozenset([
    "email_send_email", "email_delete_email", "email_forward_email", "email_reply_email",
    "calendar_create_event", "calendar_delete_event", "calendar_update_event",
    "analytics_create_plot",
    "project_management_create_task", "project_management_delete_task", "project_management_update_task",
    "customer_relationship_manager_update_customer", "customer_relationship_manager_add_customer",
    "customer_relationship_manager_delete_customer",
])

TOOL_SCOPES = ("all", "domain", "none")
SHARED_TOOLKIT = "company_directory"   # every domain's tasks may need someone's email address


def tools_in_scope(tools: list[dict], category: str, scope: str = "all") -> list[dict]:
    """The tools a prompt shows. "all": every tool the row lists (the reference). "domain": only the tools of
    the row's own domain plus the company directory, in the row's order: a much shorter prompt for tiny models
    (config `env.tool_scope`); every tool still executes, so a call outside the scope is not an error.
    Categories without a single domain keep all tools. "none": no tool section at all (the sft stage's
    short-context phase)."""
    if scope not in TOOL_SCOPES:
        raise ValueError(f"tool scope must be one of {TOOL_SCOPES}, got {scope!r}")
    if scope == "all":
        return list(tools)
    if scope == "none":
        return []
    domain = category.removeprefix("workplace_assistant_")
    prefixes = {prefix for prefix, _, _ in _TOOLKITS}
    if domain not in prefixes:
        return list(tools)
    keep = (domain + "_", SHARED_TOOLKIT + "_")
    return [tool for tool in tools if str(tool.get("name") or tool.get("function", {}).get("name", "")).startswith(keep)]


__all__ = ["TOOL_SCHEMAS", "TOOL_NAMES", "TOOL_SCOPES", "REGISTRY", "WRITE_TOOLS", "ToolEntry", "tools_in_scope"]
