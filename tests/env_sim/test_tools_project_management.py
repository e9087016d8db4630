"""Project management tools: success and error paths, ID rule, case-sensitive enums."""

import pytest

from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import Database

TASK = {
    "task_name": "Write docs",
    "assigned_to_email": "Leila.Azizi@atlas.com",
    "list_name": "Backlog",
    "due_date": "2023-12-15",
    "board": "Design",
}


@pytest.fixture
def db():
    return Database.fresh()


def test_get_task_information(db):
    f = "project_management_get_task_information_by_id"
    assert call_tool(db, f, {"task_id": "00000149", "field": "task_name"}) == {"task_name": "Add animation to carousel"}
    assert call_tool(db, f, {"task_id": "00000149", "field": "priority"}) == "Field not found."
    assert call_tool(db, f, {"task_id": "00009999", "field": "board"}) == "Task not found."
    assert call_tool(db, f, {"field": "board"}) == "Task ID not provided."
    assert call_tool(db, f, {"task_id": "00000149"}) == "Field not provided."


def test_search_tasks(db):
    s = "project_management_search_tasks"
    mine = call_tool(db, s, {"assigned_to_email": "LEILA.AZIZI@atlas.com"})
    assert len(mine) == 20 and {t["assigned_to_email"] for t in mine} == {"leila.azizi@atlas.com"}
    both = call_tool(db, s, {"task_name": "CAROUSEL", "list_name": "completed"})
    assert [t["task_id"] for t in both] == ["00000104"]
    assert call_tool(db, s, {}) == "No search parameters provided."
    assert call_tool(db, s, {"assigned_to_email": "leila"}) == "Invalid email format for assigned_to_email."
    assert call_tool(db, s, {"task_name": "no such task"}) == []


def test_create_task_id_rule_and_renumbering(db):
    assert call_tool(db, "project_management_create_task", TASK) == "00000300"
    assert db.project_tasks.record(300) == {**TASK, "task_id": "00000300", "assigned_to_email": "leila.azizi@atlas.com"}
    assert db.project_tasks.labels == list(range(301))


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"board": None}, "Missing task details."),
        (
            {"assigned_to_email": "stranger@atlas.com"},
            "Assignee email not valid. Please choose from the list of team members.",
        ),
        (
            {"list_name": "backlog"},
            "List not valid. Please choose from: 'Backlog', 'In Progress', 'In Review', 'Completed'.",
        ),
        ({"board": "Backend"}, "Board not valid. Please choose from: 'Back end', 'Front end', 'Design'."),
    ],
)
def test_create_task_validation(db, change, expected):
    assert call_tool(db, "project_management_create_task", {**TASK, **change}) == expected
    assert len(db.project_tasks) == 300


def test_update_and_delete_task(db):
    u = "project_management_update_task"
    assert call_tool(db, u, {"task_id": "00000149", "field": "list_name", "new_value": "In Review"}) == (
        "Task updated successfully."
    )
    assert call_tool(
        db, u, {"task_id": "00000149", "field": "assigned_to_email", "new_value": "NIA.johnson@atlas.com"}
    ) == ("Task updated successfully.")
    assert db.project_tasks.record(0)["list_name"] == "In Review"
    assert db.project_tasks.record(0)["assigned_to_email"] == "nia.johnson@atlas.com"
    assert call_tool(db, u, {"task_id": "00000149", "field": "board", "new_value": "design"}) == (
        "Board not valid. Please choose from: 'Back end', 'Front end', 'Design'."
    )
    assert call_tool(db, u, {"task_id": "00000149", "field": "assigned_to_email", "new_value": "x@y.z"}) == (
        "Assignee email not valid. Please choose from the list of team members."
    )
    assert call_tool(db, u, {"task_id": "00000149", "field": "priority", "new_value": "high"}) == "Field not valid."
    assert call_tool(db, u, {"task_id": "00009999", "field": "board", "new_value": "Design"}) == "Task not found."
    assert call_tool(db, u, {"task_id": "00000149", "field": "board"}) == "Task ID, field, or new value not provided."
    assert call_tool(db, u, {"task_id": "00000149", "field": ["board"], "new_value": "x"}) == (
        "Error executing tool 'project_management_update_task': unhashable type: 'list'"
    )
    assert call_tool(db, "project_management_delete_task", {"task_id": "00000149"}) == "Task deleted successfully."
    assert call_tool(db, "project_management_delete_task", {"task_id": "00000149"}) == "Task not found."
    assert call_tool(db, "project_management_delete_task", {}) == "Task ID not provided."
    assert db.project_tasks.labels[0] == 1  # the deleted row's label is gone, the others keep theirs
