"""The 27 Workplace Assistant tools: schemas in the reference's order, the name -> method registry, ``call_tool``.

A tool named ``<toolkit>_<method>`` runs ``<Toolkit>Tool(db).<method>(**kwargs)``; every toolkit
class wraps one ``Database`` and keeps the reference's class, method and parameter names.
"""

from __future__ import annotations

from typing import NamedTuple

from env_sim.workplace_assistant.tools import (
    analytics,
    calendar,
    company_directory,
    customer_relationship_manager,
    email,
    project_management,
)


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
    (
        "customer_relationship_manager",
        customer_relationship_manager.CustomerRelationshipManagerTool,
        customer_relationship_manager.SCHEMAS,
    ),
]

TOOL_SCHEMAS: list[dict] = [schema for _, _, schemas in _TOOLKITS for schema in schemas]
TOOL_NAMES: list[str] = [schema["name"] for schema in TOOL_SCHEMAS]

REGISTRY: dict[str, ToolEntry] = {}
for _prefix, _cls, _schemas in _TOOLKITS:
    for _schema in _schemas:
        _method = _schema["name"][len(_prefix) + 1 :]
        assert callable(getattr(_cls, _method, None)), _schema["name"]
        REGISTRY[_schema["name"]] = ToolEntry(_cls, _method)

# Tools that can change one of the five compared tables (WorkBench's "side-effect" tools).
WRITE_TOOLS = frozenset(
    [
        "email_send_email",
        "email_delete_email",
        "email_forward_email",
        "email_reply_email",
        "calendar_create_event",
        "calendar_delete_event",
        "calendar_update_event",
        "analytics_create_plot",
        "project_management_create_task",
        "project_management_delete_task",
        "project_management_update_task",
        "customer_relationship_manager_update_customer",
        "customer_relationship_manager_add_customer",
        "customer_relationship_manager_delete_customer",
    ]
)

TOOLKIT_NAMES = tuple(prefix for prefix, _, _ in _TOOLKITS)
SHARED_TOOLKIT = "company_directory"  # every domain's tasks may need someone's email address


def call_tool(db, name: str, kwargs: dict):
    """Run tool ``name`` on ``db`` as the reference server does (``POST /<tool_name>``): None-valued arguments
    are dropped; an unknown tool, a wrong argument or an exception becomes ``"Error executing tool '<name>': ..."``.
    Returns the tool's result (str, dict or list) or that error string."""
    args = {key: value for key, value in kwargs.items() if value is not None}
    try:
        entry = REGISTRY[name]
        return getattr(entry.toolkit(db), entry.method)(**args)
    except Exception as e:  # returned to the model so it can correct itself, as the reference does
        return f"Error executing tool '{name}': {e}"


__all__ = [
    "TOOL_SCHEMAS",
    "TOOL_NAMES",
    "TOOLKIT_NAMES",
    "SHARED_TOOLKIT",
    "REGISTRY",
    "WRITE_TOOLS",
    "ToolEntry",
    "call_tool",
]
