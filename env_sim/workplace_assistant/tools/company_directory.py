"""Company directory: look up colleagues' email addresses (read-only)."""

from __future__ import annotations

from env_sim.workplace_assistant.tools.pandas_semantics import compile_contains
from env_sim.workplace_assistant.tools.schema import function_schema


class CompanyDirectoryTool:
    """Tool methods keep the reference's class and parameter names: a wrong keyword argument
    produces the same ``TypeError`` text the model would see from the reference."""

    def __init__(self, db):
        self._db = db

    def find_email_address(self, name=""):
        if name == "":
            return "Name not provided."
        name = name.lower()
        rx = compile_contains(name, case=False)
        return [addr for addr in self._db.directory if rx.search(addr) is not None]


SCHEMAS = [
    function_schema(
        "company_directory_find_email_address",
        "Finds all email addresses containing the given name (case-insensitive search).",
        [("name", "Name or partial name to search for in email addresses")],
        [],
    ),
]
