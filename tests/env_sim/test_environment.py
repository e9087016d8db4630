"""The seam: the agent loop, the server and the CLI run any Environment, and know no environment's internals."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading

import pytest

from env_sim.agent import Episode, run_episode, scripted_model
from env_sim.environment import Environment, Verdict, get_environment
from env_sim.formats import get_format
from env_sim.server import make_server

COUNTER_TOOLS = [
    {
        "type": "function",
        "name": "add",
        "description": "Add to the counter.",
        "parameters": {
            "type": "object",
            "properties": {"n": {"type": "integer", "description": "amount"}},
            "required": ["n"],
            "additionalProperties": False,
        },
        "strict": False,
    }
]


def _add(state: dict, name: str, kwargs: dict):
    if name != "add":
        return f"no tool {name}"
    state["total"] += int(kwargs.get("n", 0))
    return state["total"]


def _verify(predicted, ground_truth) -> Verdict:
    def total(calls):
        return sum(json.loads(call["arguments"]).get("n", 0) for call in calls if call["name"] == "add")

    return Verdict(float(total(predicted) == total(ground_truth)), {"num_predicted_calls": len(predicted)})


COUNTER = Environment(
    name="counter", tool_schemas=COUNTER_TOOLS, fresh_state=lambda: {"total": 0}, call_tool=_add, verify=_verify
)
ROW = {
    "id": 1,
    "category": "counter",
    "environment_name": "counter",
    "responses_create_params": {"input": [{"role": "user", "content": "Add 2 then 3."}]},
    "ground_truth": [{"name": "add", "arguments": '{"n": 5}'}],
}


def test_generic_modules_do_not_import_an_environment():
    code = (
        "import sys, env_sim.agent, env_sim.server, env_sim.execute, env_sim.formats, env_sim.environment, "
        "env_sim.files; print('env_sim.workplace_assistant' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_environments_are_found_by_name():
    wa = get_environment("workplace_assistant")
    assert wa is get_environment(None) and wa.name == "workplace_assistant" and len(wa.tool_schemas) == 27
    assert get_environment(COUNTER) is COUNTER
    with pytest.raises(ValueError, match="unknown environment"):
        get_environment("nowhere")


def test_an_episode_runs_a_toy_environment():
    fmt = "hermes"
    calls = [{"name": "add", "arguments": '{"n": 2}'}, {"name": "add", "arguments": '{"n": 3}'}]
    model = scripted_model([get_format(fmt).format_assistant("", calls)])
    episode = run_episode(model, ROW, fmt, env=COUNTER)
    assert episode.state == {"total": 5} and episode.reward == 1.0
    assert [json.loads(m["content"])["output"] for m in episode.messages if m["role"] == "tool"] == [2, 5]
    assert "add" in episode.messages[0]["content"]  # the toy's tools were rendered into the prompt
    assert Episode(ROW, fmt, env=COUNTER, tool_scope="domain").tools == COUNTER_TOOLS  # default domain_tools: all


def test_the_server_serves_a_toy_environment():
    srv = make_server(COUNTER, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
        conn.request("POST", "/seed_session", body="{}")
        resp = conn.getresponse()
        resp.read()
        cookie = resp.getheader("Set-Cookie").split(";", 1)[0]
        conn.request("POST", "/add", body='{"n": 4}', headers={"Cookie": cookie})
        assert json.loads(conn.getresponse().read()) == {"output": 4}
        body = {
            "ground_truth": [{"name": "add", "arguments": '{"n": 4}'}],
            "response": {"output": [{"type": "function_call", "name": "add", "arguments": '{"n": 4}'}]},
        }
        conn.request("POST", "/verify", body=json.dumps(body), headers={"Cookie": cookie})
        assert json.loads(conn.getresponse().read())["reward"] == 1.0
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
