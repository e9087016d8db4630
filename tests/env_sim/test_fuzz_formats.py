"""Fuzzed model outputs: parsing never raises, results are well-formed, and episodes never leak state.

The outputs are seeded mixtures of garbage text, truncated or mismatched tags of both formats, reasoning tags, bad
JSON, wrong types, huge nesting, and valid calls (to real and unknown tools, with arguments of every JSON type).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from env_sim.formats import ParsedTurn, get_format

DATA = Path(__file__).resolve().parent / "data"
TAGS = [
    "<tool_call>",
    "</tool_call>",
    "<TOOLCALL>",
    "</TOOLCALL>",
    "<think>",
    "</think>",
    "<tool_response>",
    "<|im_end|>",
    "<SPECIAL_12>",
    "[",
    "]",
    "{",
    "}",
    '"',
    "\\",
    "\n",
]
TOOL_NAMES = [
    "email_send_email",
    "email_delete_email",
    "calendar_create_event",
    "calendar_update_event",
    "analytics_create_plot",
    "project_management_update_task",
    "customer_relationship_manager_add_customer",
    "company_directory_find_email_address",
    "email_search_emails",
    "no_such_tool",
    "",
]
KEYS = [
    "email_id",
    "recipient",
    "subject",
    "body",
    "event_id",
    "field",
    "new_value",
    "duration",
    "time_min",
    "time_max",
    "value_to_plot",
    "plot_type",
    "task_id",
    "customer_name",
    "assigned_to_email",
    "status",
    "page",
    "query",
    "useless_argument",
]


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(
            [
                "",
                "00000001",
                "00000499",
                "a@b.com",
                "Backlog",
                "2023-12-01 10:00:00",
                "é✓\u0000",
                "</tool_call>",
                "]</TOOLCALL>",
            ]
        )
    if kind == 1:
        return rng.randint(-10, 10**12)
    if kind == 2:
        return rng.random() * rng.choice([1, 1e300, -1e-300])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind in (4, 5):
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 12)))
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _call_json(rng: random.Random) -> str:
    obj: dict = {}
    if rng.random() < 0.9:
        obj["name"] = rng.choice(TOOL_NAMES) if rng.random() < 0.9 else _value(rng)
    if rng.random() < 0.85:
        obj["arguments"] = (
            {k: _value(rng) for k in rng.sample(KEYS, rng.randrange(0, 4))} if rng.random() < 0.8 else _value(rng)
        )
    if rng.random() < 0.1:
        obj = [obj] if rng.random() < 0.5 else _value(rng)
    text = json.dumps(obj, ensure_ascii=rng.random() < 0.5)
    if rng.random() < 0.2:
        text = text[: rng.randrange(0, len(text) + 1)]  # truncated
    if rng.random() < 0.05:
        text = text.replace('"', "'")  # Python-style quotes
    return text


def _piece(rng: random.Random) -> str:
    kind = rng.randrange(8)
    if kind == 0:
        return "".join(rng.choice(TAGS) for _ in range(rng.randrange(1, 6)))
    if kind == 1:
        return "".join(
            chr(rng.randrange(0, 0x10FFFF))
            for _ in range(rng.randrange(0, 30))
            if not 0xD800 <= rng.randrange(0, 0x10FFFF) <= 0xDFFF
        )
    if kind == 2:
        return f"<tool_call>{_call_json(rng)}" + ("</tool_call>" if rng.random() < 0.8 else "")
    if kind == 3:
        calls = ", ".join(_call_json(rng) for _ in range(rng.randrange(0, 3)))
        return f"<TOOLCALL>[{calls}" + ("]</TOOLCALL>" if rng.random() < 0.8 else "")
    if kind == 4:
        return f"<think>{_call_json(rng)}" + ("</think>" if rng.random() < 0.7 else "")
    if kind == 5:
        depth = rng.choice([10, 1000, 100000])
        return "<tool_call>" + "[" * depth + "]" * rng.randrange(0, depth)
    if kind == 6:
        return rng.choice(["Done.", "I have sent the email.", "", "   ", "Let me check."])
    return _call_json(rng)


def plausible_write(rng: random.Random) -> dict:
    """A well-formed write that usually succeeds (so the fuzz changes the databases it is given)."""
    number = f"{rng.randrange(0, 520):08d}"
    return rng.choice(
        [
            {"name": "email_delete_email", "arguments": {"email_id": number}},
            {
                "name": "email_send_email",
                "arguments": {"recipient": "kofi.mensah@atlas.com", "subject": "s", "body": "b"},
            },
            {"name": "calendar_delete_event", "arguments": {"event_id": number}},
            {
                "name": "analytics_create_plot",
                "arguments": {
                    "time_min": "2023-11-01",
                    "time_max": "2023-11-02",
                    "value_to_plot": "total_visits",
                    "plot_type": "bar",
                },
            },
            {
                "name": "project_management_update_task",
                "arguments": {"task_id": number, "field": "list_name", "new_value": "Backlog"},
            },
            {"name": "customer_relationship_manager_delete_customer", "arguments": {"customer_id": number}},
        ]
    )


def fuzzed_output(rng: random.Random) -> str:
    return "".join(_piece(rng) for _ in range(rng.randrange(1, 5)))


def _check_turn(turn: ParsedTurn) -> None:
    assert isinstance(turn, ParsedTurn)
    assert isinstance(turn.content, str) and isinstance(turn.reasoning, str)
    assert all(isinstance(e, str) and e for e in turn.errors)
    for call in turn.tool_calls:
        assert set(call) == {"name", "arguments"}
        assert isinstance(call["name"], str) and call["name"].strip() == call["name"] and call["name"]
        assert isinstance(call["arguments"], str)


@pytest.mark.parametrize("name", ["hermes", "nemotron"])
def test_ten_thousand_fuzzed_outputs_parse_without_raising(name):
    fmt = get_format(name)
    rng = random.Random(1234)
    found_calls = found_errors = 0
    for _ in range(10_000):
        text = fuzzed_output(rng)
        turn = fmt.parse(text)
        _check_turn(turn)
        assert fmt.parse(text) == turn  # parsing is pure: same text, same result
        found_calls += bool(turn.tool_calls)
        found_errors += bool(turn.errors)
    # The fuzzer exercises both paths substantially (not only garbage, not only good calls).
    assert found_calls > 500 and found_errors > 1000


@pytest.mark.parametrize("name", ["hermes", "nemotron"])
def test_valid_calls_survive_surrounding_garbage(name):
    fmt = get_format(name)
    rng = random.Random(99)
    for _ in range(2000):
        calls = [
            {"name": rng.choice(TOOL_NAMES[:-2]), "arguments": {k: _value(rng) for k in rng.sample(KEYS, 2)}}
            for _ in range(rng.randrange(1, 4))
        ]
        noise = rng.choice(["", "Sure.", "ok\n", "]}", "1 < 2 > 0"])
        turn = fmt.parse(noise + fmt.format_assistant("", calls))
        assert [json.loads(c["arguments"]) for c in turn.tool_calls] == [c["arguments"] for c in calls]
        assert [c["name"] for c in turn.tool_calls] == [c["name"] for c in calls]


def test_fuzzed_episodes_never_leak_state():
    """10,000 fuzzed model outputs played through episodes (both formats): no exception, every episode starts from
    the initial state, and replaying an episode's outputs on a new episode gives identical tool outputs."""
    from env_sim.agent import Episode
    from env_sim.workplace_assistant.database import Database

    row = json.loads((DATA / "example.jsonl").read_text().splitlines()[0])
    pristine = Database.fresh()
    rng = random.Random(7)
    outputs_played = 0
    changed_state = 0
    while outputs_played < 10_000:
        fmt = get_format(rng.choice(["hermes", "nemotron"]))
        texts = []
        for _ in range(rng.randrange(1, 7)):
            roll = rng.random()
            if roll < 0.25:
                texts.append(fmt.format_assistant("", [plausible_write(rng)]))
            elif roll < 0.5:  # a well-formed call to a real tool with fuzzed arguments
                call = {"name": rng.choice(TOOL_NAMES[:-2]), "arguments": {k: _value(rng) for k in rng.sample(KEYS, 3)}}
                texts.append(fmt.format_assistant("", [call]))
            else:
                texts.append(fuzzed_output(rng))
        episode = Episode(row, fmt, max_steps=6)
        assert episode.state == pristine, "a new episode must start from the initial state"
        tool_outputs = []
        for text in texts:
            if episode.done:
                break
            episode.step(text)
            outputs_played += 1
        tool_outputs = [i["output"] for i in episode.response_items() if i["type"] == "function_call_output"]
        changed_state += episode.state != pristine
        replay = Episode(row, fmt, max_steps=6)
        for text in texts[: episode.steps]:
            replay.step(text)
        assert [i["output"] for i in replay.response_items() if i["type"] == "function_call_output"] == tool_outputs
        assert replay.state == episode.state
    assert Database.fresh() == pristine
    assert changed_state > 100  # the fuzz did write to the databases it was given
