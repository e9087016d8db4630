"""The wire texts of a tool call, as the reference server and agent produce them (environment-agnostic).

``execute_call`` is the agent side: it parses the model's JSON arguments, runs the call with the environment's
``call_tool`` and returns the exact ``function_call_output`` text the reference agent records (the server's raw
response body). ``dump_output`` and ``unprocessable_body`` are the server's reply bodies.
"""

from __future__ import annotations

import json


def dump_output(result) -> str:
    """The server's JSON body for ``{"output": result}`` (compact, UTF-8 kept as is).

    Non-finite floats (only possible when a model sent them) become null, as pydantic writes them.
    """
    try:
        return json.dumps({"output": result}, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps({"output": _finite(result)}, ensure_ascii=False, separators=(",", ":"))


def _finite(value):
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def parse_arguments(arguments_json):
    """``(kwargs, None)`` or ``(None, error_output)`` for the model's JSON argument string."""
    try:
        parsed = json.loads(arguments_json)
    except (json.JSONDecodeError, TypeError) as e:
        return None, json.dumps({"error": f"Invalid tool call arguments: {e!r}"})
    if not isinstance(parsed, dict):
        return None, unprocessable_body(parsed)
    return parsed, None


def unprocessable_body(body) -> str:
    """The 422 body the reference's FastAPI route answers when the JSON body is not an object."""
    if body is None:  # the agent posts no body at all
        detail = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    else:
        detail = {
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": body,
        }
    return json.dumps({"detail": [detail]}, ensure_ascii=False, separators=(",", ":"))


def execute_call(call_tool, state, name: str, arguments_json: str) -> str:
    """The ``function_call_output`` text the reference agent records for one model tool call on ``state``;
    ``call_tool(state, name, kwargs)`` is the environment's (``Environment.call_tool``)."""
    kwargs, error_output = parse_arguments(arguments_json)
    if error_output is not None:
        return error_output
    return dump_output(call_tool(state, name, kwargs))
