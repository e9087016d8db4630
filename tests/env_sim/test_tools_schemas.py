"""Tool schemas and registry match the reference's published tool list exactly."""

import json
from pathlib import Path

from env_sim.workplace_assistant.tools import REGISTRY, TOOL_NAMES, TOOL_SCHEMAS, WRITE_TOOLS

DATA = Path(__file__).parent / "data"


def test_schemas_equal_the_dataset_tools_verbatim_and_in_order():
    row = json.loads((DATA / "example.jsonl").read_text().splitlines()[0])
    assert TOOL_SCHEMAS == row["responses_create_params"]["tools"]
    # key order matters for prompts rendered from the schemas
    assert json.dumps(TOOL_SCHEMAS) == json.dumps(row["responses_create_params"]["tools"])


def test_names_registry_and_write_tools():
    assert len(TOOL_NAMES) == 27 == len(set(TOOL_NAMES))
    assert TOOL_NAMES[0] == "company_directory_find_email_address"
    assert TOOL_NAMES[-1] == "customer_relationship_manager_delete_customer"
    assert set(REGISTRY) == set(TOOL_NAMES)
    assert len(WRITE_TOOLS) == 14 and WRITE_TOOLS <= set(TOOL_NAMES)
    assert REGISTRY["analytics_total_visits_count"].toolkit.__name__ == "AnalyticsTool"


def test_only_page_arguments_are_integers():
    ints = {
        (s["name"], p)
        for s in TOOL_SCHEMAS
        for p, spec in s["parameters"]["properties"].items()
        if spec["type"] == "integer"
    }
    assert {p for _, p in ints} == {"page", "page_size"}
    assert {n for n, _ in ints} == {
        "email_search_emails",
        "calendar_search_events",
        "customer_relationship_manager_search_customers",
    }
