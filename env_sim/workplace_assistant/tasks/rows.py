"""Dataset rows in the exact format of the Workplace Assistant dataset, and their validation.

    {"id": 0,
     "responses_create_params": {"input": [{"role": "system", "content": SYSTEM_PROMPT},
                                           {"role": "user", "content": "<query>"}],
                                 "tools": <the 27 tool schemas>, "parallel_tool_calls": false, "temperature": 1.0},
     "ground_truth": [{"name": "<tool>", "arguments": "<JSON object text>"}],
     "category": "workplace_assistant_<domain>",
     "environment_name": "workplace_assistant"}

The prepare stage adds `agent_ref`; `validate_row` accepts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from env_sim.files import atomic_write_lines

SYSTEM_PROMPT = (
    "Today's date is Thursday, 2023-11-30 and the current time is 23:59:00. Remember the current date and time "
    "when answering queries. Meetings must not start before 9am or end after 6pm."
)
ENVIRONMENT_NAME = "workplace_assistant"
DOMAINS = ("email", "calendar", "analytics", "project_management", "customer_relationship_manager")
CATEGORY_PREFIX = "workplace_assistant_"
CATEGORIES = tuple(CATEGORY_PREFIX + domain for domain in DOMAINS)
ROW_KEYS = ("id", "responses_create_params", "ground_truth", "category", "environment_name")
OPTIONAL_ROW_KEYS = ("agent_ref",)


def category_of(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return CATEGORY_PREFIX + domain


def ground_truth_call(name: str, arguments: dict[str, Any] | str) -> dict[str, str]:
    """One ground-truth entry; arguments are stored as JSON text the way the dataset stores them."""
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"name": name, "arguments": text}


def make_row(
    row_id: int,
    query: str,
    ground_truth: Iterable[dict[str, Any]],
    domain: str,
    tools: list[dict[str, Any]] | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> dict[str, Any]:
    """A dataset row; ground-truth arguments may be dicts or JSON text."""
    if tools is None:
        from env_sim.workplace_assistant.tools import TOOL_SCHEMAS

        tools = TOOL_SCHEMAS
    return {
        "id": int(row_id),
        "responses_create_params": {
            "input": [{"role": "system", "content": system_prompt}, {"role": "user", "content": query}],
            "tools": [json.loads(json.dumps(tool)) for tool in tools],
            "parallel_tool_calls": False,
            "temperature": 1.0,
        },
        "ground_truth": [ground_truth_call(call["name"], call["arguments"]) for call in ground_truth],
        "category": category_of(domain),
        "environment_name": ENVIRONMENT_NAME,
    }


def row_query(row: dict[str, Any]) -> str:
    """The user request of a row (its last user message)."""
    for message in reversed(row["responses_create_params"]["input"]):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(part.get("text", "") for part in content if isinstance(part, dict))
            return content
    raise ValueError(f"row {row.get('id')}: no user message")


# --- validation ----------------------------------------------------------------------------------------------

# Plain-string results by which tools report a failed call without raising (the reference returns them as the
# tool's output); an executed ground-truth call must never produce one.
_FAILURE_MARKERS = (
    "Error ",  # "Error executing tool ...", "Error sending email: ..."
    "not found",  # "Email not found.", "Field 'x' not found. ..."
    "not provided",
    "Invalid",
    "not valid",
    "must be",
    "Please provide",
    "Please choose",
    "No search parameters provided",
    "Missing",
)


def output_is_failure(output_text: str) -> bool:
    """Whether an execute_call output reports a failure (exception or a tool's own validation message)."""
    try:
        decoded = json.loads(output_text)
    except ValueError:
        return True
    if not isinstance(decoded, dict):
        return True
    if "error" in decoded:
        return True
    value = decoded.get("output")
    return isinstance(value, str) and any(marker in value for marker in _FAILURE_MARKERS)


def _check_arguments(where: str, name: str, arguments: Any, schema: dict[str, Any]) -> list[str]:
    if not isinstance(arguments, str):
        return [f"{where}: arguments must be a JSON string, got {type(arguments).__name__}"]
    try:
        decoded = json.loads(arguments)
    except ValueError as error:
        return [f"{where}: arguments are not valid JSON ({error})"]
    if not isinstance(decoded, dict):
        return [f"{where}: arguments must encode a JSON object, got {type(decoded).__name__}"]
    parameters = schema.get("parameters") or {}
    properties = parameters.get("properties") or {}
    problems = [f"{where}: {name} has no parameter {key!r}" for key in decoded if key not in properties]
    problems += [
        f"{where}: {name} is missing required parameter {key!r}"
        for key in parameters.get("required") or []
        if key not in decoded
    ]
    for key, value in decoded.items():
        expected = (properties.get(key) or {}).get("type")
        if expected == "string" and not isinstance(value, str):
            problems.append(f"{where}: {name}.{key} must be a string, got {type(value).__name__}")
        if expected == "integer" and (not isinstance(value, int) or isinstance(value, bool)):
            problems.append(f"{where}: {name}.{key} must be an integer, got {type(value).__name__}")
    return problems


def validate_row(row: Any, replay: bool = True, strict: bool = False) -> list[str]:
    """Problems of one row (empty list: the row is good). `replay` also executes the ground truth on a fresh
    database and reports every call whose output is an error. `strict` also rejects a ground truth whose writes
    leave the state unchanged (WorkBench has two such rows: reassigning a customer to their current owner)."""
    from env_sim.workplace_assistant.tools import TOOL_NAMES, TOOL_SCHEMAS

    if not isinstance(row, dict):
        return [f"row must be a JSON object, got {type(row).__name__}"]
    label = f"row {row.get('id', '?')}"
    problems = [f"{label}: missing key {key!r}" for key in ROW_KEYS if key not in row]
    problems += [f"{label}: unexpected key {key!r}" for key in row if key not in ROW_KEYS + OPTIONAL_ROW_KEYS]
    if problems:
        return problems
    if not isinstance(row["id"], int) or isinstance(row["id"], bool) or row["id"] < 0:
        problems.append(f"{label}: id must be a non-negative integer, got {row['id']!r}")
    if row["category"] not in CATEGORIES:
        problems.append(f"{label}: category {row['category']!r} is not one of {CATEGORIES}")
    if row["environment_name"] != ENVIRONMENT_NAME:
        problems.append(f"{label}: environment_name must be {ENVIRONMENT_NAME!r}, got {row['environment_name']!r}")

    params = row["responses_create_params"]
    if not isinstance(params, dict):
        return problems + [f"{label}: responses_create_params must be an object"]
    messages = params.get("input")
    if not isinstance(messages, list) or len(messages) != 2:
        problems.append(f"{label}: input must be a list of [system, user] messages")
    else:
        for message, role in zip(messages, ("system", "user")):
            if not isinstance(message, dict) or message.get("role") != role:
                problems.append(
                    f"{label}: input must be [system, user], got role {message.get('role')!r}"
                    if isinstance(message, dict)
                    else f"{label}: input messages must be objects"
                )
            elif not isinstance(message.get("content"), str) or not message["content"].strip():
                problems.append(f"{label}: the {role} message needs non-empty text content")
    tools = params.get("tools")
    if not isinstance(tools, list) or [t.get("name") if isinstance(t, dict) else None for t in tools] != TOOL_NAMES:
        problems.append(f"{label}: tools must be the {len(TOOL_NAMES)} tool schemas in reference order")
    elif tools != TOOL_SCHEMAS:
        changed = [tool["name"] for tool, reference in zip(tools, TOOL_SCHEMAS) if tool != reference]
        problems.append(f"{label}: tool schemas differ from the reference for {changed}")
    if params.get("parallel_tool_calls") is not False:
        problems.append(f"{label}: parallel_tool_calls must be false")
    if not isinstance(params.get("temperature"), (int, float)) or isinstance(params.get("temperature"), bool):
        problems.append(f"{label}: temperature must be a number")

    ground_truth = row["ground_truth"]
    if not isinstance(ground_truth, list):
        return problems + [f"{label}: ground_truth must be a list"]
    schemas = {tool["name"]: tool for tool in TOOL_SCHEMAS}
    calls_ok = True
    for index, call in enumerate(ground_truth):
        where = f"{label} ground_truth[{index}]"
        if not isinstance(call, dict) or set(call) != {"name", "arguments"}:
            problems.append(f"{where}: must be an object with exactly 'name' and 'arguments'")
            calls_ok = False
            continue
        if call["name"] not in schemas:
            problems.append(f"{where}: unknown tool {call['name']!r}")
            calls_ok = False
            continue
        found = _check_arguments(where, call["name"], call["arguments"], schemas[call["name"]])
        problems += found
        calls_ok = calls_ok and not found
    if replay and calls_ok:
        problems += replay_problems(row, strict=strict)
    return problems


def replay_problems(row: dict[str, Any], strict: bool = False) -> list[str]:
    """Execute the ground truth in order on a fresh database; every failing call is a problem (and, if strict,
    writes that change nothing)."""
    from env_sim.execute import execute_call
    from env_sim.workplace_assistant.database import Database
    from env_sim.workplace_assistant.tools import WRITE_TOOLS, call_tool
    from env_sim.workplace_assistant.verify import verify

    db = Database.fresh()
    problems = []
    for index, call in enumerate(row["ground_truth"]):
        output = execute_call(call_tool, db, call["name"], call["arguments"])
        if output_is_failure(output):
            problems.append(
                f"row {row.get('id', '?')} ground_truth[{index}] {call['name']}: replay failed: {output[:300]}"
            )
    writes = any(call["name"] in WRITE_TOOLS for call in row["ground_truth"])
    if (
        strict
        and writes
        and not problems
        and not verify([], row["ground_truth"]).diagnostics.get("ground_truth_changes_state")
    ):
        problems.append(f"row {row.get('id', '?')}: the ground truth writes but leaves the state unchanged")
    return problems


# --- files ---------------------------------------------------------------------------------------------------


def write_rows(path: str | Path, rows: Iterable[dict[str, Any]]) -> Path:
    """Write rows as JSON lines, atomically (a temp file in the same folder renamed into place)."""
    return atomic_write_lines(path, (json.dumps(row, ensure_ascii=False) for row in rows))


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file; a bad line raises with file:line."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({error})") from None
