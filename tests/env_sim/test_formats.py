"""Tool-call formats: tool rendering, call round trips, parsing edge cases, chat rendering, Responses conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from env_sim.formats import ParsedTurn, get_format, render_compact_tools
from env_sim.formats.responses import items_to_messages, messages_to_items, tool_to_chat

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def example_rows():
    return [json.loads(line) for line in (DATA / "example.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tools(example_rows):
    return example_rows[0]["responses_create_params"]["tools"]


@pytest.fixture(params=["hermes", "nemotron"])
def fmt(request):
    return get_format(request.param)


CALLS = [
    {"name": "email_reply_email", "arguments": {"email_id": "00000057", "body": 'Thanks - I\'ll check "it"\n\ttoday.'}},
    {
        "name": "calendar_create_event",
        "arguments": {
            "event_name": "Süß 会議",
            "participant_email": "a@b.com",
            "event_start": "2023-12-01 09:00:00",
            "duration": "30",
        },
    },
    {"name": "analytics_total_visits_count", "arguments": {}},
    {"name": "email_search_emails", "arguments": {"query": "</tool_call> <TOOLCALL>", "page": 2}},
]


def test_get_format_names_and_errors():
    assert get_format("hermes").name == "hermes"
    assert get_format("NEMOTRON").name == "nemotron"
    fmt = get_format("hermes")
    assert get_format(fmt) is fmt
    with pytest.raises(ValueError, match="unknown tool format 'qwen'"):
        get_format("qwen")


# --- tools in the system prompt --------------------------------------------------------------------------------


def test_hermes_renders_one_chat_schema_per_line(tools):
    block = get_format("hermes").render_tools(tools)
    assert block.startswith("# Tools\n\nYou may call one or more functions")
    body = block.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    lines = body.split("\n")
    assert len(lines) == len(tools) == 27
    for line, tool in zip(lines, tools):
        decoded = json.loads(line)
        assert decoded == {
            "type": "function",
            "function": {"name": tool["name"], "description": tool["description"], "parameters": tool["parameters"]},
        }
        assert line == json.dumps(decoded, ensure_ascii=False)  # tojson spacing, key order kept
    assert block.endswith('<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def test_nemotron_renders_function_list(tools):
    block = get_format("nemotron").render_tools(tools)
    listing = block.split("<AVAILABLE_TOOLS>", 1)[1].split("</AVAILABLE_TOOLS>", 1)[0]
    decoded = json.loads(listing)
    assert [d["name"] for d in decoded] == [t["name"] for t in tools]
    assert all(set(d) == {"name", "description", "parameters"} for d in decoded)
    assert '<TOOLCALL>[{"name": "tool_name1"' in block


def test_system_prompt_joins_row_system_text(fmt, tools):
    system = "Today's date is Thursday, 2023-11-30."
    prompt = fmt.system_prompt(system, tools)
    assert prompt.startswith(system + "\n\n")
    assert prompt.endswith(fmt.render_tools(tools))
    assert fmt.system_prompt("", tools) == fmt.render_tools(tools)


def test_compact_rendering_is_much_shorter_and_complete(fmt, tools):
    full, compact = fmt.render_tools(tools), fmt.render_tools(tools, compact=True)
    assert len(full) / len(compact) > 3.5
    listing = render_compact_tools(tools)
    assert len(json.dumps(tools)) / len(listing) > 4
    for tool in tools:
        line = next(line for line in listing.splitlines() if line.startswith(tool["name"] + "("))
        for parameter in tool["parameters"]["properties"]:
            marker = parameter + ("*" if parameter in tool["parameters"]["required"] else "")
            assert marker in line, (tool["name"], parameter)
    assert "plot_type*=bar|line|scatter|histogram" in listing
    assert "list_name*=Backlog|In Progress|In Review|Completed" in listing
    assert "page:int" in listing and "event_start*:datetime" in listing


def test_tool_to_chat_accepts_both_shapes(tools):
    chat = tool_to_chat(tools[0])
    assert chat["type"] == "function" and "strict" not in chat["function"]
    assert tool_to_chat(chat) == chat


# --- calls: round trip and parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize("content", ["", "Let me do that.", "Two lines\nof text."])
def test_round_trip_calls_and_content(fmt, content):
    text = fmt.format_assistant(content, CALLS)
    turn = fmt.parse(text)
    assert turn.errors == []
    assert turn.content == content.strip()
    assert [c["name"] for c in turn.tool_calls] == [c["name"] for c in CALLS]
    assert [json.loads(c["arguments"]) for c in turn.tool_calls] == [c["arguments"] for c in CALLS]


def test_string_arguments_are_written_as_json_text(fmt):
    calls = [{"name": "email_delete_email", "arguments": '{"email_id":"00000001"}'}]
    text = fmt.format_tool_calls(calls)
    assert '"arguments": {"email_id":"00000001"}' in text  # embedded verbatim, as chat templates do
    assert [json.loads(c["arguments"]) for c in fmt.parse(text).tool_calls] == [{"email_id": "00000001"}]


def test_arguments_given_as_a_string_pass_through(fmt):
    # The model wrote the arguments as a JSON string: the executor decodes it (or reports invalid JSON).
    payload = '{"name": "email_delete_email", "arguments": "{not json"}'
    text = f"<tool_call>{payload}</tool_call>" if fmt.name == "hermes" else f"<TOOLCALL>[{payload}]</TOOLCALL>"
    assert fmt.parse(text).tool_calls == [{"name": "email_delete_email", "arguments": "{not json"}]


def test_closing_tag_inside_a_string_does_not_cut_the_call(fmt):
    calls = [{"name": "email_send_email", "arguments": {"body": "see </tool_call> and </TOOLCALL> and ]"}}]
    turn = fmt.parse(fmt.format_tool_calls(calls) + " trailing")
    assert turn.errors == [] and json.loads(turn.tool_calls[0]["arguments"]) == calls[0]["arguments"]
    assert turn.content == "trailing"


def test_hermes_exact_call_text():
    text = get_format("hermes").format_tool_calls([{"name": "email_delete_email", "arguments": {"email_id": "1"}}])
    assert text == '<tool_call>\n{"name": "email_delete_email", "arguments": {"email_id": "1"}}\n</tool_call>'


def test_nemotron_exact_call_text():
    text = get_format("nemotron").format_tool_calls(
        [{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]
    )
    assert text == '<TOOLCALL>[{"name": "a", "arguments": {"x": 1}}, {"name": "b", "arguments": {}}]</TOOLCALL>'


def test_plain_text_has_no_calls(fmt):
    turn = fmt.parse("  The email was sent.  ")
    assert turn == ParsedTurn(content="The email was sent.", tool_calls=[], errors=[], reasoning="")


@pytest.mark.parametrize(
    "text,reasoning,content",
    [
        ("<think>plan it</think>Answer", "plan it", "Answer"),
        ("plan it</think>\n\nAnswer", "plan it", "Answer"),  # template opened the block
        ("Answer<think>unfinished thought", "unfinished thought", "Answer"),
        ("<think>a</think>x<think>b</think>y", "a\nb", "xy"),
    ],
)
def test_reasoning_is_stripped(fmt, text, reasoning, content):
    turn = fmt.parse(text)
    assert (turn.reasoning, turn.content) == (reasoning, content)


def test_calls_inside_reasoning_are_ignored(fmt):
    call_text = fmt.format_tool_calls([{"name": "email_delete_email", "arguments": {"email_id": "1"}}])
    turn = fmt.parse(f"<think>maybe {call_text}</think>No action needed.")
    assert turn.tool_calls == [] and turn.errors == [] and turn.content == "No action needed."


def test_hermes_several_blocks_and_unclosed_last():
    text = (
        '<tool_call>{"name": "a", "arguments": {"x": "1"}}</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {"y": "2"}}'
    )  # generation stopped at </tool_call>
    turn = get_format("hermes").parse(text)
    assert [c["name"] for c in turn.tool_calls] == ["a", "b"] and turn.errors == []


def test_nemotron_unclosed_block_and_single_object():
    fmt = get_format("nemotron")
    assert fmt.parse('<TOOLCALL>[{"name": "a", "arguments": {}}]').tool_calls == [{"name": "a", "arguments": "{}"}]
    assert fmt.parse('<TOOLCALL>{"name": "a", "arguments": {"k": 1}}</TOOLCALL>').tool_calls == [
        {"name": "a", "arguments": '{"k": 1}'}
    ]
    assert fmt.parse("<TOOLCALL>[]</TOOLCALL>") == ParsedTurn(content="", tool_calls=[], errors=[])


@pytest.mark.parametrize(
    "payload,fragment",
    [
        ('{"name": "a", "arguments": {"x": 1}', "could not be parsed"),  # truncated JSON
        ("{'name': 'a'}", "could not be parsed"),  # Python, not JSON
        ('{"arguments": {}}', 'missing or empty "name"'),
        ('{"name": "", "arguments": {}}', 'missing or empty "name"'),
        ('{"name": 5, "arguments": {}}', 'missing or empty "name"'),
        ('{"name": "a", "arguments": [1, 2]}', '"arguments" of a must be a JSON object'),
        ('{"name": "a", "arguments": 3}', '"arguments" of a must be a JSON object'),
        ('"just a string"', "expected a JSON object"),
        ("", "could not be parsed"),
    ],
)
def test_bad_calls_become_errors(fmt, payload, fragment):
    open_tag, close_tag = ("<tool_call>", "</tool_call>") if fmt.name == "hermes" else ("<TOOLCALL>", "</TOOLCALL>")
    if fmt.name == "nemotron" and payload.startswith("{"):
        payload = f"[{payload}]" if not payload.endswith("1}") else payload
    good = fmt.format_tool_calls([{"name": "ok", "arguments": {}}])
    turn = fmt.parse(f"Trying.\n{open_tag}{payload}{close_tag}\n{good}")
    assert len(turn.errors) == 1 and fragment in turn.errors[0], turn.errors
    assert turn.tool_calls == [{"name": "ok", "arguments": "{}"}]  # the good call survives
    assert turn.content == "Trying."


def test_non_string_input_is_an_error(fmt):
    turn = fmt.parse(None)  # type: ignore[arg-type]
    assert turn.tool_calls == [] and turn.errors


def test_error_snippet_is_bounded(fmt):
    open_tag = "<tool_call>" if fmt.name == "hermes" else "<TOOLCALL>"
    turn = fmt.parse(open_tag + "{" + "x" * 10000)
    assert len(turn.errors) == 1 and len(turn.errors[0]) < 600


# --- tool outputs and whole prompts ----------------------------------------------------------------------------


def test_hermes_prompt_groups_tool_responses_in_one_user_turn():
    fmt = get_format("hermes")
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "<tool_call>\n{}\n</tool_call>"},
        {"role": "tool", "content": '{"output": 1}'},
        {"role": "tool", "content": '{"output": 2}'},
    ]
    assert fmt.render_prompt(messages) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n{}\n</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"output": 1}\n</tool_response>\n'
        '<tool_response>\n{"output": 2}\n</tool_response><|im_end|>\n<|im_start|>assistant\n'
    )
    assert fmt.format_tool_result("x") == "<tool_response>\nx\n</tool_response>"


def test_nemotron_prompt_joins_tool_responses():
    fmt = get_format("nemotron")
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {
            "role": "assistant",
            "content": "ok",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "a", "arguments": "{}"}}],
        },
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    assert fmt.render_prompt(messages) == (
        "<SPECIAL_10>System\nS\n<SPECIAL_11>User\nU\n"
        '<SPECIAL_11>Assistant\nok\n\n<TOOLCALL>[{"name": "a", "arguments": {}}]</TOOLCALL>\n<SPECIAL_12>\n'
        "<SPECIAL_11>User\n<TOOL_RESPONSE>[r1, r2]</TOOL_RESPONSE>\n<SPECIAL_11>Assistant\n<think></think>"
    )


def test_tool_message_shape(fmt):
    assert fmt.tool_message("out", call_id="c1", name="n") == {
        "role": "tool",
        "content": "out",
        "tool_call_id": "c1",
        "name": "n",
    }


# --- Responses items <-> chat messages -------------------------------------------------------------------------


def test_rollout_items_round_trip_through_chat_messages():
    rollouts = [json.loads(line) for line in (DATA / "example_rollouts.jsonl").read_text().splitlines() if line]
    for rollout in rollouts:
        items = rollout["responses_create_params"]["input"] + rollout["response"]["output"]
        messages = items_to_messages(items)
        roles = [m["role"] for m in messages]
        assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
        calls = [i for i in items if i.get("type") == "function_call"]
        outputs = [i for i in items if i.get("type") == "function_call_output"]
        assert [c["id"] for m in messages for c in m.get("tool_calls", [])] == [c["call_id"] for c in calls]
        assert [m["content"] for m in messages if m["role"] == "tool"] == [o["output"] for o in outputs]
        back = messages_to_items(messages)
        assert [
            (i.get("type"), i.get("name"), i.get("arguments"), i.get("call_id"))
            for i in back
            if i.get("type") == "function_call"
        ] == [(c["type"], c["name"], c["arguments"], c["call_id"]) for c in calls]
        assert [i["output"] for i in back if i.get("type") == "function_call_output"] == [o["output"] for o in outputs]
        final = [i for i in back if i.get("type") == "message" and i.get("role") == "assistant"]
        assert final[-1]["content"][0]["text"] == rollout["response"]["output"][-1]["content"][0]["text"]


def test_reasoning_items_become_think_text_and_back():
    items = [
        {"type": "reasoning", "summary": [{"text": "why", "type": "summary_text"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]},
    ]
    messages = items_to_messages(items)
    assert messages == [{"role": "assistant", "content": "<think>why</think>hi"}]
    back = messages_to_items(messages)
    assert [i["type"] for i in back] == ["reasoning", "message"] and back[0]["summary"][0]["text"] == "why"


def test_items_to_messages_rejects_unknown_items():
    with pytest.raises(ValueError, match="item 0: unsupported item type 'web_search'"):
        items_to_messages([{"type": "web_search"}])


def test_signatures_level_drops_descriptions_but_keeps_every_tool_and_parameter():
    from env_sim.formats.compact import compact_level, render_compact_tools
    from env_sim.workplace_assistant.tools import TOOL_SCHEMAS

    full = render_compact_tools(TOOL_SCHEMAS, True)
    short = render_compact_tools(TOOL_SCHEMAS, "signatures")
    assert len(short) < 0.8 * len(full)
    assert "Sends an email" in full and "Sends an email" not in short
    for tool in TOOL_SCHEMAS:
        line = next(line for line in short.splitlines() if line.startswith(tool["name"] + "("))
        for param in tool["parameters"]["properties"]:
            assert param in line
    assert compact_level("signatures") == "signatures" and compact_level("false") is False
    with pytest.raises(ValueError, match="compact_tools"):
        compact_level("tiny")
