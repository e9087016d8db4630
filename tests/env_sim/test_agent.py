"""The agent loop: the reference's stop rules, execution, recorded items, and the gym_examples replayed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from env_sim.agent import Episode, expert_turns, run_episode, scripted_model
from env_sim.formats import get_format
from env_sim.workplace_assistant.database import Database
from env_sim.workplace_assistant.tasks.rows import SYSTEM_PROMPT, make_row

DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_ROWS = [json.loads(line) for line in (DATA / "example.jsonl").read_text().splitlines() if line.strip()]
ROLLOUTS = [json.loads(line) for line in (DATA / "example_rollouts.jsonl").read_text().splitlines() if line.strip()]

DELETE_57 = {"name": "email_delete_email", "arguments": '{"email_id": "00000057"}'}
SEARCH = {"name": "email_search_emails", "arguments": '{"query": "carlos"}'}


def row_with(ground_truth, query="Delete email 00000057"):
    return make_row(7, query, ground_truth, "email")


@pytest.fixture(params=["hermes", "nemotron"])
def fmt(request):
    return get_format(request.param)


def calls_text(fmt, *calls):
    return fmt.format_assistant("", list(calls))


# --- episode set-up ---------------------------------------------------------------------------------------------


def test_messages_start_with_system_prompt_and_tools(fmt):
    episode = Episode(EXAMPLE_ROWS[0], fmt)
    system, user = episode.messages
    assert system["role"] == "system" and system["content"].startswith(SYSTEM_PROMPT + "\n\n")
    assert fmt.render_tools(EXAMPLE_ROWS[0]["responses_create_params"]["tools"]) in system["content"]
    assert user == {"role": "user", "content": EXAMPLE_ROWS[0]["responses_create_params"]["input"][1]["content"]}
    assert not episode.done and episode.steps == 0 and episode.function_calls == []


def test_compact_tools_shrink_the_system_prompt(fmt):
    full = Episode(EXAMPLE_ROWS[0], fmt).messages[0]["content"]
    compact = Episode(EXAMPLE_ROWS[0], fmt, compact_tools=True).messages[0]["content"]
    assert compact.startswith(SYSTEM_PROMPT) and len(compact) * 3 < len(full)
    assert "email_reply_email(email_id*, body*)" in compact


def test_domain_tool_scope_shows_only_the_domain_and_the_directory_but_every_tool_still_runs():
    row = row_with([DELETE_57])  # an email task
    shown = [tool["name"] for tool in Episode(row, "hermes", tool_scope="domain").tools]
    assert shown[0] == "company_directory_find_email_address" and len(shown) == 7
    assert all(name.startswith(("email_", "company_directory_")) for name in shown)
    prompt = Episode(row, "hermes", compact_tools=True, tool_scope="domain").messages[0]["content"]
    assert "email_reply_email(" in prompt and "calendar_" not in prompt
    # a call outside the shown scope is executed and scored as usual
    outside = {"name": "calendar_delete_event", "arguments": '{"event_id": "00000013"}'}
    episode = run_episode(
        scripted_model([calls_text(get_format("hermes"), outside)]), row, "hermes", tool_scope="domain"
    )
    assert episode.function_calls == [outside] and "Error" not in json.dumps(episode.response_items()[1])
    assert episode.reward == 0.0
    assert len(Episode(row, "hermes", tool_scope="all").tools) == 27
    with pytest.raises(ValueError, match="tool scope must be one of"):
        Episode(row, "hermes", tool_scope="mine")


def test_max_steps_must_be_positive():
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        Episode(EXAMPLE_ROWS[0], "hermes", max_steps=0)


# --- stop rules ---------------------------------------------------------------------------------------------------


def test_a_response_without_calls_ends_the_episode(fmt):
    episode = Episode(row_with([DELETE_57]), fmt)
    episode.step("I cannot help with that.")
    assert episode.done and episode.stop_reason == "no_tool_calls" and episode.steps == 1
    assert episode.finish().reward == 0.0
    items = episode.response_items()
    assert [i["type"] for i in items] == ["message"] and items[0]["content"][0]["text"] == "I cannot help with that."


def test_max_steps_stops_after_executing_the_last_steps_calls(fmt):
    episode = Episode(row_with([DELETE_57]), fmt, max_steps=3)
    for _ in range(2):
        episode.step(calls_text(fmt, SEARCH))
        assert not episode.done
    episode.step(calls_text(fmt, DELETE_57))  # the third and last allowed model call
    assert episode.done and episode.stop_reason == "max_steps" and episode.steps == 3
    assert episode.function_calls == [SEARCH, SEARCH, DELETE_57]
    assert json.loads(episode.messages[-1]["content"]) == {"output": "Email deleted successfully."}
    assert episode.finish().reward == 1.0  # the last step's call counted


def test_default_max_steps_is_six(fmt):
    episode = run_episode(lambda messages: calls_text(fmt, SEARCH), row_with([]), fmt)
    assert episode.steps == 6 and episode.stop_reason == "max_steps" and len(episode.function_calls) == 6
    assert episode.reward == 1.0  # reads never change state: an empty ground truth is met


def test_step_after_done_raises(fmt):
    episode = Episode(row_with([]), fmt)
    episode.step("Done.")
    with pytest.raises(RuntimeError, match="is finished"):
        episode.step("more")


def test_reasoning_only_response_does_not_end_the_episode(fmt):
    # The reference stops only when the response has an assistant message; reasoning alone is not one.
    episode = Episode(row_with([DELETE_57]), fmt)
    episode.step("<think>let me think about which email</think>")
    assert not episode.done
    assert [i["type"] for i in episode.response_items()] == ["reasoning"]
    episode.step(calls_text(fmt, DELETE_57))
    episode.step("Deleted.")
    assert episode.done and episode.finish().reward == 1.0


def test_truncated_response_ends_the_episode_and_its_calls_still_count(fmt):
    episode = Episode(row_with([DELETE_57]), fmt)
    episode.step(calls_text(fmt, DELETE_57), truncated=True)
    assert episode.done and episode.stop_reason == "truncated"
    assert episode.state == Database.fresh()  # not executed ...
    assert episode.function_calls == [DELETE_57]
    assert episode.finish().reward == 1.0  # ... but the verifier replays every function call of the response
    assert episode.response()["incomplete_details"] == {"reason": "max_output_tokens"}


# --- execution ------------------------------------------------------------------------------------------------------


def test_calls_execute_in_order_on_the_episodes_own_database(fmt):
    first = Episode(row_with([DELETE_57]), fmt)
    second = Episode(row_with([DELETE_57]), fmt)
    first.step(calls_text(fmt, DELETE_57, DELETE_57))
    outputs = [json.loads(m["content"])["output"] for m in first.messages if m["role"] == "tool"]
    assert outputs == ["Email deleted successfully.", "Email not found."]
    assert first.state != Database.fresh() and second.state == Database.fresh()
    tool_messages = [m for m in first.messages if m["role"] == "tool"]
    call_items = [i for i in first.response_items() if i["type"] == "function_call"]
    assert [m["tool_call_id"] for m in tool_messages] == [i["call_id"] for i in call_items]
    assert all(m["name"] == "email_delete_email" for m in tool_messages)


def test_invalid_json_arguments_give_the_reference_error_output(fmt):
    bad = {"name": "email_delete_email", "arguments": "{email_id: 57"}
    text = (
        '<tool_call>{"name": "email_delete_email", "arguments": "{email_id: 57"}</tool_call>'
        if fmt.name == "hermes"
        else '<TOOLCALL>[{"name": "email_delete_email", "arguments": "{email_id: 57"}]</TOOLCALL>'
    )
    episode = Episode(row_with([DELETE_57]), fmt)
    episode.step(text)
    try:
        json.loads(bad["arguments"])
    except json.JSONDecodeError as error:
        expected = json.dumps({"error": f"Invalid tool call arguments: {error!r}"})
    assert episode.messages[-1]["content"] == expected
    assert episode.function_calls == [bad]  # still a function call the verifier sees (and skips)
    assert not episode.done
    assert episode.finish().reward == 0.0


def test_unknown_tool_and_bad_argument_are_reported_to_the_model(fmt):
    episode = Episode(row_with([]), fmt)
    episode.step(
        calls_text(
            fmt,
            {"name": "email_explode", "arguments": "{}"},
            {"name": "email_delete_email", "arguments": '{"useless_argument": 1}'},
        )
    )
    outputs = [json.loads(m["content"])["output"] for m in episode.messages if m["role"] == "tool"]
    assert outputs[0].startswith("Error executing tool 'email_explode'")
    assert "unexpected keyword argument 'useless_argument'" in outputs[1]


def test_unparsable_call_becomes_an_error_message_and_is_not_executed(fmt):
    episode = Episode(row_with([DELETE_57]), fmt)
    opener = "<tool_call>" if fmt.name == "hermes" else "<TOOLCALL>"
    episode.step(f'Deleting now. {opener}{{"name": "email_delete_email", "arguments": {{"email_id": ')
    assert not episode.done and episode.function_calls == [] and episode.num_parse_errors == 1
    error = json.loads(episode.messages[-1]["content"])["error"]
    assert error.startswith("Invalid tool call: Tool call") and "could not be parsed" in error
    assert episode.messages[-1]["role"] == "tool"
    assert episode.state == Database.fresh()
    episode.step(calls_text(fmt, DELETE_57))
    episode.step("Done.")
    assert episode.finish().reward == 1.0


def test_parse_errors_as_plain_text_when_feedback_is_off(fmt):
    episode = Episode(row_with([DELETE_57]), fmt, parse_error_feedback=False)
    opener = "<tool_call>" if fmt.name == "hermes" else "<TOOLCALL>"
    episode.step(f'{opener}{{"name": oops}}')
    assert episode.done and episode.stop_reason == "no_tool_calls" and episode.num_parse_errors == 0


def test_finish_before_done_scores_what_was_done(fmt):
    episode = Episode(row_with([DELETE_57]), fmt)
    episode.step(calls_text(fmt, DELETE_57))
    verdict = episode.finish()
    assert episode.done and episode.stop_reason == "finished_early" and verdict.reward == 1.0
    assert episode.summary()["reward"] == 1.0


def test_prompt_renders_the_whole_conversation(fmt):
    episode = Episode(row_with([DELETE_57]), fmt)
    episode.step(calls_text(fmt, DELETE_57))
    prompt = episode.prompt()
    assert SYSTEM_PROMPT in prompt and "Delete email 00000057" in prompt
    assert "Email deleted successfully." in prompt
    assert prompt.endswith(
        "<|im_start|>assistant\n" if fmt.name == "hermes" else "<SPECIAL_11>Assistant\n<think></think>"
    )


# --- the gym_examples -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(EXAMPLE_ROWS)))
def test_example_rows_expert_scores_one_and_no_op_scores_zero(fmt, index):
    row = EXAMPLE_ROWS[index]
    expert = run_episode(scripted_model(expert_turns(row, fmt, calls_per_turn=1)), row, fmt)
    assert expert.reward == 1.0 and expert.stop_reason == "no_tool_calls"
    assert expert.function_calls == row["ground_truth"]
    lazy = run_episode(scripted_model(["I have done it."]), row, fmt)
    assert lazy.reward == 0.0


# Ground truths of the rollouts' tasks (the rollout file has none): computed from the data the way the dataset's
# templates do (Casey Wilson is customer 00000014; kofi's last email is 00000259; no consulting proposal is 3 weeks
# old); "since November 30" plots end yesterday in the WorkBench templates.
ROLLOUT_GROUND_TRUTH = [
    [
        {
            "name": "analytics_create_plot",
            "arguments": json.dumps(
                {
                    "time_min": "2023-11-30",
                    "time_max": "2023-11-29",
                    "value_to_plot": "total_visits",
                    "plot_type": "bar",
                }
            ),
        }
    ],
    [],
    [{"name": "customer_relationship_manager_delete_customer", "arguments": '{"customer_id": "00000014"}'}],
    [
        {
            "name": "customer_relationship_manager_add_customer",
            "arguments": json.dumps(
                {"customer_name": "Dakota Thomas", "assigned_to_email": "nadia.moreau@atlas.com", "status": "Lead"}
            ),
        }
    ],
    [{"name": "email_delete_email", "arguments": '{"email_id": "00000259"}'}],
]


@pytest.mark.parametrize("index", range(len(ROLLOUTS)))
def test_recorded_rollouts_replay_with_identical_outputs_and_reward(fmt, index):
    rollout = ROLLOUTS[index]
    recorded = rollout["response"]["output"]
    turns = []
    for item in recorded:  # parallel_tool_calls is false: one call per model turn, then a final message
        if item["type"] == "function_call":
            turns.append(fmt.format_assistant("", [{"name": item["name"], "arguments": item["arguments"]}]))
        elif item["type"] == "message":
            turns.append(item["content"][0]["text"])
    row = {
        "id": index,
        "responses_create_params": rollout["responses_create_params"],
        "ground_truth": ROLLOUT_GROUND_TRUTH[index],
        "category": "workplace_assistant_email",
        "environment_name": "workplace_assistant",
    }
    episode = run_episode(scripted_model(turns), row, fmt)
    items = episode.response_items()
    assert [i["type"] for i in items] == [i["type"] for i in recorded]
    assert [i["output"] for i in items if i["type"] == "function_call_output"] == [
        i["output"] for i in recorded if i["type"] == "function_call_output"
    ]
    assert [(i["name"], json.loads(i["arguments"])) for i in items if i["type"] == "function_call"] == [
        (i["name"], json.loads(i["arguments"])) for i in recorded if i["type"] == "function_call"
    ]
    assert episode.reward == rollout["reward"]
