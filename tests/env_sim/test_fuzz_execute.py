"""10,000 fuzzed tool calls: nothing raises, outputs are well-formed, episodes never leak state."""

import json
import random

from env_sim.execute import execute_call
from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import Database
from env_sim.workplace_assistant.tools import TOOL_SCHEMAS
from env_sim.workplace_assistant.verify import verify

PARAMS = sorted({p for s in TOOL_SCHEMAS for p in s["parameters"]["properties"]})
STRINGS = [
    "",
    " ",
    "00000057",
    "00000252",
    "00000149",
    "00000107",
    "2023-11-30",
    "2023-12-01 10:00:00",
    "nadia.moreau@atlas.com",
    "Lead",
    "Backlog",
    "Design",
    "bar",
    "total_visits",
    "(",
    "[",
    "*",
    ".*",
    "\\",
    "é",
    "60",
    "-1",
    "0",
    "email_id",
    "duration",
    "status",
    "notes",
    "x" * 300,
    "\u0000",
    "null",
]


def random_value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if r < 0.45:
        return rng.choice(STRINGS)
    if r < 0.6:
        return rng.choice([0, 1, -1, 5, 60, 10**20, 2.5, -0.0, float("inf")])
    if r < 0.68:
        return rng.choice([True, False, None])
    if r < 0.84 and depth < 2:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2:
        return {rng.choice(PARAMS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 2))}
    return "leaf"


def random_call(rng: random.Random):
    if rng.random() < 0.9:
        schema = rng.choice(TOOL_SCHEMAS)
        name, own = schema["name"], list(schema["parameters"]["properties"])
    else:
        name, own = rng.choice(["", "email", "verify", "seed_session", "x" * 80, "email_send_email ", "ëmail"]), []
    keys = [p for p in own if rng.random() < 0.6]
    if rng.random() < 0.15:
        keys.append(rng.choice(PARAMS + ["self", "kwargs", "", "__class__"]))
    return name, {k: random_value(rng) for k in keys}


def garbage_json(rng: random.Random, args: dict) -> str:
    text = json.dumps(args, allow_nan=True)
    choice = rng.random()
    if choice < 0.3:
        return text[: rng.randint(0, len(text))]
    if choice < 0.5:
        return rng.choice(["", "null", "[]", "1", '"str"', "{'single': 1}", '{"a":}', "NaN", "{}{}"])
    return text


def _pristine_copy():
    db = Database.fresh()
    tables = {name: (list(t.columns), list(t.rows), list(t.labels)) for name, t in db.compared_tables().items()}
    tables["analytics_data"] = (
        list(db.analytics_data.columns),
        list(db.analytics_data.rows),
        list(db.analytics_data.labels),
    )
    return tables, tuple(db.directory)


def test_ten_thousand_fuzzed_calls_never_raise_and_never_leak():
    rng = random.Random(20231130)
    pristine_tables, pristine_directory = _pristine_copy()
    calls = 0
    while calls < 10_000:
        db = Database.fresh()
        episode = []
        for _ in range(rng.randint(1, 12)):
            name, args = random_call(rng)
            if rng.random() < 0.5:
                out = call_tool(db, name, dict(args))
                assert isinstance(out, (str, dict, list))
                json.dumps(out, allow_nan=True)  # every result is serialisable
            else:
                text = execute_call(call_tool, db, name, garbage_json(rng, args))
                assert isinstance(text, str)
                assert set(json.loads(text)) & {"output", "error", "detail"}
            episode.append({"name": name, "arguments": json.dumps(args, allow_nan=True)})
            calls += 1
        verdict = verify(episode, episode[: rng.randint(0, len(episode))])
        assert verdict.reward in (0.0, 1.0)
        # a new episode starts from the untouched snapshot whatever the last one did
        fresh = Database.fresh()
        assert fresh == Database.fresh()
        assert fresh.session_seconds_are_float is False
    tables, directory = _pristine_copy()
    assert tables == pristine_tables and directory == pristine_directory


def test_episodes_are_isolated_from_each_other():
    a, b = Database.fresh(), Database.fresh()
    call_tool(a, "email_delete_email", {"email_id": "00000057"})
    call_tool(a, "calendar_update_event", {"event_id": "00000252", "field": "event_name", "new_value": "X"})
    assert len(a.emails) == 499 and len(b.emails) == 500
    assert b.calendar_events.record(b.calendar_events.column("event_id").index("00000252"))["event_name"] != "X"
    assert a.differing_tables(b) == ["calendar", "email"]
    assert Database.fresh() == b
