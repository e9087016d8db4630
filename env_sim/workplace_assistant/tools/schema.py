"""Builds tool schemas in the Responses-API shape the reference publishes."""

from __future__ import annotations


def function_schema(name: str, description: str, params: list[tuple], required: list[str]) -> dict:
    """``params``: (name, description) for strings or (name, description, json_type)."""
    properties = {}
    for p in params:
        pname, pdesc = p[0], p[1]
        ptype = p[2] if len(p) > 2 else "string"
        properties[pname] = {"type": ptype, "description": pdesc}
    return {
        "type": "function",
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": list(required),
            "additionalProperties": False,
        },
        "strict": False,
    }
