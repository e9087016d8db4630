"""Project management toolkit: tasks on boards (look up, search, create, delete, update)."""

from __future__ import annotations

import re

from env_sim.workplace_assistant.tools.pandas_semantics import (
    array_contains,
    contains_mask,
    series_eq,
    series_max,
    str_lower,
)
from env_sim.workplace_assistant.tools.schema import function_schema

LISTS = ["Backlog", "In Progress", "In Review", "Completed"]
BOARDS = ["Back end", "Front end", "Design"]
_EMAIL_PATTERN = r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$"
_BAD_ASSIGNEE = "Assignee email not valid. Please choose from the list of team members."
_BAD_LIST = "List not valid. Please choose from: 'Backlog', 'In Progress', 'In Review', 'Completed'."
_BAD_BOARD = "Board not valid. Please choose from: 'Back end', 'Front end', 'Design'."


class ProjectManagementTool:
    """The reference's ProjectManagementTool over our tables (class and parameter names kept)."""

    def __init__(self, db):
        self._db = db

    def get_task_information_by_id(self, task_id=None, field=None):
        if not task_id:
            return "Task ID not provided."
        if not field:
            return "Field not provided."
        t = self._db.project_tasks
        for pos, hit in enumerate(series_eq(t.column("task_id"), task_id)):
            if hit:
                task = t.record(pos)
                if field in task:
                    return {field: task[field]}
                return "Field not found."
        return "Task not found."

    def search_tasks(self, task_name=None, assigned_to_email=None, list_name=None, due_date=None, board=None):
        if not any([task_name, assigned_to_email, list_name, due_date, board]):
            return "No search parameters provided."
        if assigned_to_email:
            if not re.match(_EMAIL_PATTERN, assigned_to_email):
                return "Invalid email format for assigned_to_email."
        t = self._db.project_tasks
        rows = list(t.rows)
        ix = t.index_of
        for value, col in (
            (task_name, "task_name"),
            (assigned_to_email, None),
            (list_name, "list_name"),
            (due_date, "due_date"),
            (board, "board"),
        ):
            if not value:
                continue
            if col is None:  # the assignee is matched exactly (case-insensitive)
                wanted = assigned_to_email.lower()
                lowered = str_lower([r[ix["assigned_to_email"]] for r in rows])
                rows = [r for r, v in zip(rows, lowered) if v == wanted]
            else:
                mask = contains_mask([r[ix[col]] for r in rows], value, case=False)
                rows = [r for r, k in zip(rows, mask) if k]
        return [dict(zip(t.columns, r)) for r in rows]

    def create_task(self, task_name=None, assigned_to_email=None, list_name=None, due_date=None, board=None):
        if not all([task_name, assigned_to_email, list_name, due_date, board]):
            return "Missing task details."
        assigned_to_email = assigned_to_email.lower()
        t = self._db.project_tasks
        if not array_contains(str_lower(t.column("assigned_to_email")), assigned_to_email):
            return _BAD_ASSIGNEE
        if list_name not in LISTS:
            return _BAD_LIST
        if board not in BOARDS:
            return _BAD_BOARD
        task_id = str(int(series_max(t.column("task_id"))) + 1).zfill(8)
        t.append(
            {
                "task_id": task_id,
                "task_name": task_name,
                "assigned_to_email": assigned_to_email,
                "list_name": list_name,
                "due_date": due_date,
                "board": board,
            },
            renumber=True,
        )
        return task_id

    def delete_task(self, task_id=None):
        if not task_id:
            return "Task ID not provided."
        t = self._db.project_tasks
        ids = t.column("task_id")
        if array_contains(ids, task_id):
            t.keep([not hit for hit in series_eq(ids, task_id)])
            return "Task deleted successfully."
        return "Task not found."

    def update_task(self, task_id=None, field=None, new_value=None):
        if not task_id or not field or not new_value:
            return "Task ID, field, or new value not provided."
        if field == "assigned_to_email":
            new_value = new_value.lower()
        if field == "board" and new_value not in BOARDS:
            return _BAD_BOARD
        if field == "list_name" and new_value not in LISTS:
            return _BAD_LIST
        t = self._db.project_tasks
        if field == "assigned_to_email" and not array_contains(str_lower(t.column("assigned_to_email")), new_value):
            return _BAD_ASSIGNEE
        ids = t.column("task_id")
        if array_contains(ids, task_id):
            if field in t.index_of:  # a dict lookup: an unhashable field raises like pandas' Index
                t.set_where(series_eq(ids, task_id), field, new_value)
                return "Task updated successfully."
            return "Field not valid."
        return "Task not found."


_TASK_ID = "8-digit ID of the task"

SCHEMAS = [
    function_schema(
        "project_management_get_task_information_by_id",
        "Returns the task information for a given ID.",
        [
            ("task_id", _TASK_ID),
            (
                "field",
                "Field to return. Available fields are: 'task_id', 'task_name', 'assigned_to_email', "
                "'list_name', 'due_date', 'board'",
            ),
        ],
        ["task_id", "field"],
    ),
    function_schema(
        "project_management_search_tasks",
        "Searches for tasks based on the given parameters.",
        [
            ("task_name", "Name of the task"),
            ("assigned_to_email", "Email address of the person assigned to the task"),
            ("list_name", "Name of the list the task belongs to"),
            ("due_date", "Due date of the task in YYYY-MM-DD format"),
            ("board", "Name of the board the task belongs to"),
        ],
        [],
    ),
    function_schema(
        "project_management_create_task",
        "Creates a new task.",
        [
            ("task_name", "Name of the task"),
            ("assigned_to_email", "Email address of the person assigned to the task"),
            (
                "list_name",
                "Name of the list the task belongs to. One of: 'Backlog', 'In Progress', 'In Review', 'Completed'",
            ),
            ("due_date", "Due date of the task in YYYY-MM-DD format"),
            ("board", "Name of the board the task belongs to. One of: 'Back end', 'Front end', 'Design'"),
        ],
        ["task_name", "assigned_to_email", "list_name", "due_date", "board"],
    ),
    function_schema(
        "project_management_delete_task",
        "Deletes a task by ID.",
        [("task_id", _TASK_ID)],
        ["task_id"],
    ),
    function_schema(
        "project_management_update_task",
        "Updates a task by ID.",
        [
            ("task_id", _TASK_ID),
            (
                "field",
                "Field to update. Available fields are: 'task_name', 'assigned_to_email', 'list_name', "
                "'due_date', 'board'",
            ),
            ("new_value", "New value for the field"),
        ],
        ["task_id", "field", "new_value"],
    ),
]
