"""call_tool / execute_call: argument handling and the exact output texts the reference records."""

import json

from env_sim.execute import execute_call
from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import Database


def test_unknown_tool_and_unexpected_argument_texts():
    db = Database.fresh()
    assert call_tool(db, "email_fly", {}) == "Error executing tool 'email_fly': 'email_fly'"
    assert call_tool(db, "email_get_email_information_by_id", {"email_id": "00000057", "useless_argument": 1}) == (
        "Error executing tool 'email_get_email_information_by_id': EmailTool.get_email_information_by_id() "
        "got an unexpected keyword argument 'useless_argument'"
    )
    assert call_tool(db, "customer_relationship_manager_delete_customer", {"id": "1"}) == (
        "Error executing tool 'customer_relationship_manager_delete_customer': "
        "CustomerRelationshipManagerTool.delete_customer() got an unexpected keyword argument 'id'"
    )


def test_none_arguments_are_dropped_so_defaults_apply():
    db = Database.fresh()
    # query=None would fail inside the tool; dropped, the default "" matches every email
    out = call_tool(db, "email_search_emails", {"query": None, "page_size": 1})
    assert out["pagination"]["total_emails"] == 500
    # notes=None dropped -> the default "" is stored
    call_tool(
        db,
        "customer_relationship_manager_add_customer",
        {"customer_name": "A", "assigned_to_email": "a@b.c", "status": "Lead", "notes": None},
    )
    assert db.crm.record(200)["notes"] == ""


def test_execute_call_output_texts():
    db = Database.fresh()
    assert execute_call(call_tool, db, "email_delete_email", '{"email_id":"00000259"}') == (
        '{"output":"Email deleted successfully."}'
    )
    assert execute_call(call_tool, db, "company_directory_find_email_address", '{"name": "nadia"}') == (
        '{"output":["nadia.moreau@atlas.com"]}'
    )
    assert execute_call(call_tool, db, "email_send_email", '{"recipient":"a@b.c","subject":"Café","body":"ü"}') == (
        '{"output":"Email sent successfully."}'
    )
    assert db.emails.record(len(db.emails) - 1)["subject"] == "Café"
    # invalid JSON: the agent's own error object (json.dumps defaults, repr of the exception)
    assert execute_call(call_tool, db, "email_delete_email", '{"email_id": ') == (
        '{"error": "Invalid tool call arguments: JSONDecodeError(\'Expecting value: line 1 column 14 (char 13)\')"}'
    )
    assert execute_call(call_tool, db, "email_delete_email", None) == json.dumps(
        {
            "error": "Invalid tool call arguments: "
            "TypeError('the JSON object must be str, bytes or bytearray, not NoneType')"
        }
    )
    # valid JSON that is not an object: the server's 422 body
    body = json.loads(execute_call(call_tool, db, "email_delete_email", "[1]"))
    assert body["detail"][0]["type"] == "model_attributes_type" and body["detail"][0]["input"] == [1]


def test_ids_after_mixed_writes_follow_max_plus_one():
    db = Database.fresh()
    assert call_tool(db, "calendar_delete_event", {"event_id": "00000299"}) == "Event deleted successfully."
    # max(existing ids) + 1: deleting the top id makes it reusable, exactly like the reference
    assert (
        call_tool(
            db,
            "calendar_create_event",
            {"event_name": "a", "participant_email": "a@b.c", "event_start": "2023-12-01 10:00:00", "duration": "30"},
        )
        == "00000299"
    )
    assert (
        call_tool(
            db,
            "project_management_create_task",
            {
                "task_name": "t",
                "assigned_to_email": "leila.azizi@atlas.com",
                "list_name": "Backlog",
                "due_date": "2023-12-01",
                "board": "Design",
            },
        )
        == "00000300"
    )
    assert (
        call_tool(
            db,
            "customer_relationship_manager_add_customer",
            {"customer_name": "n", "assigned_to_email": "a@b.c", "status": "Lead"},
        )
        == "00000200"
    )


def test_non_finite_numbers_serialise_as_null():
    db = Database.fresh()
    assert (
        call_tool(
            db, "calendar_update_event", {"event_id": "00000252", "field": "event_name", "new_value": float("inf")}
        )
        == "Event updated successfully."
    )
    arguments = '{"event_id": "00000252", "field": "event_name"}'
    text = execute_call(call_tool, db, "calendar_get_event_information_by_id", arguments)
    assert text == '{"output":{"event_name":null}}'


def test_env_sim_imports_neither_pandas_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, env_sim.workplace_assistant.database, env_sim.workplace_assistant.tools, env_sim.execute, "
        "env_sim.workplace_assistant.verify, env_sim.server, env_sim.cli; "
        "print(sorted(m for m in ('pandas', 'numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
