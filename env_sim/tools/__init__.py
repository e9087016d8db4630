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

__all__ = ["TOOL_SCHEMAS", "TOOL_NAMES", "REGISTRY", "WRITE_TOOLS", "ToolEntry"]
