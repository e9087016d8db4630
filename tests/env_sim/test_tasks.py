"""Tasks: the exact row format, row validation, the WorkBench converter and the seeded generator."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest

from env_sim.execute import execute_call
from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import Database
from env_sim.workplace_assistant.tasks.generator import TEMPLATES, generate_rows, generate_tasks
from env_sim.workplace_assistant.tasks.rows import (
    CATEGORIES,
    SYSTEM_PROMPT,
    make_row,
    read_rows,
    row_query,
    validate_row,
    write_rows,
)
from env_sim.workplace_assistant.tasks.snapshot import initial_snapshot
from env_sim.workplace_assistant.tasks.workbench import (
    WorkBenchFormatError,
    convert_workbench,
    parse_answer,
    parse_call,
    read_workbench,
)
from env_sim.workplace_assistant.tools import TOOL_SCHEMAS
from env_sim.workplace_assistant.verify import verify

DATA = Path(__file__).resolve().parent / "data"
EXAMPLE_ROWS = [json.loads(line) for line in (DATA / "example.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def generated():
    return generate_rows(1255, seed=42)


@pytest.fixture(scope="module")
def workbench_rows():
    return convert_workbench()


# --- row format ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row", EXAMPLE_ROWS, ids=lambda r: str(r["id"]))
def test_make_row_reproduces_the_dataset_rows_exactly(row):
    domain = row["category"][len("workplace_assistant_") :]
    made = make_row(row["id"], row_query(row), row["ground_truth"], domain)
    assert made == row
    assert json.dumps(made) == json.dumps(row)  # same key order too
    assert row["responses_create_params"]["input"][0]["content"] == SYSTEM_PROMPT


def test_ground_truth_dict_arguments_are_stored_as_json_text():
    row = make_row(3, "q", [{"name": "email_delete_email", "arguments": {"email_id": "00000001"}}], "email")
    assert row["ground_truth"] == [{"name": "email_delete_email", "arguments": '{"email_id": "00000001"}'}]
    with pytest.raises(ValueError, match="unknown domain 'multi'"):
        make_row(3, "q", [], "multi")


@pytest.mark.parametrize("row", EXAMPLE_ROWS, ids=lambda r: str(r["id"]))
def test_example_rows_validate(row):
    assert validate_row(row, strict=True) == []
    assert validate_row({**row, "agent_ref": {"type": "responses_api_agents", "name": "x"}}) == []


def _broken(change):
    row = copy.deepcopy(EXAMPLE_ROWS[0])
    change(row)
    return validate_row(row)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda r: r.pop("category"), "missing key 'category'"),
        (lambda r: r.update(extra=1), "unexpected key 'extra'"),
        (lambda r: r.update(id="0"), "id must be a non-negative integer"),
        (
            lambda r: r.update(category="workplace_assistant_multi"),
            "category 'workplace_assistant_multi' is not one of",
        ),
        (lambda r: r.update(environment_name="x"), "environment_name must be 'workplace_assistant'"),
        (lambda r: r["responses_create_params"]["input"].pop(), "input must be a list of [system, user] messages"),
        (lambda r: r["responses_create_params"]["input"][1].update(content=" "), "the user message needs non-empty"),
        (lambda r: r["responses_create_params"]["tools"].pop(), "tools must be the 27 tool schemas"),
        (
            lambda r: r["responses_create_params"]["tools"][3].update(description="x"),
            "differ from the reference for ['email_send_email']",
        ),
        (lambda r: r["responses_create_params"].update(parallel_tool_calls=True), "parallel_tool_calls must be false"),
        (lambda r: r.update(ground_truth={}), "ground_truth must be a list"),
        (lambda r: r["ground_truth"][0].update(name="email_reply"), "unknown tool 'email_reply'"),
        (lambda r: r["ground_truth"][0].update(arguments="{bad"), "arguments are not valid JSON"),
        (lambda r: r["ground_truth"][0].update(arguments={"email_id": "1"}), "arguments must be a JSON string"),
        (lambda r: r["ground_truth"][0].update(arguments='["x"]'), "arguments must encode a JSON object"),
        (
            lambda r: r["ground_truth"][0].update(arguments='{"email_id": "00000057", "body": "x", "cc": "y"}'),
            "email_reply_email has no parameter 'cc'",
        ),
        (
            lambda r: r["ground_truth"][0].update(arguments='{"email_id": "00000057"}'),
            "missing required parameter 'body'",
        ),
        (lambda r: r["ground_truth"][0].update(arguments='{"email_id": 57, "body": "x"}'), "email_id must be a string"),
        (
            lambda r: r["ground_truth"][0].update(arguments='{"email_id": "99999999", "body": "x"}'),
            'replay failed: {"output":"Email not found."}',
        ),
    ],
)
def test_validate_row_names_each_problem(change, message):
    problems = _broken(change)
    assert any(message in problem for problem in problems), problems
    assert all(problem.startswith("row ") for problem in problems)


def test_validate_row_rejects_non_objects():
    assert validate_row([1]) == ["row must be a JSON object, got list"]


def test_rows_file_round_trip(tmp_path):
    path = write_rows(tmp_path / "sub" / "rows.jsonl", EXAMPLE_ROWS)
    assert list(read_rows(path)) == EXAMPLE_ROWS
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temp file left behind
    path.write_text(path.read_text() + "{oops\n")
    with pytest.raises(ValueError, match=r"rows.jsonl:6: not valid JSON"):
        list(read_rows(path))


# --- WorkBench ----------------------------------------------------------------------------------------------------


def test_parse_call_maps_dotted_names_and_literals():
    assert parse_call('email.delete_email.func(email_id="00000479")') == {
        "name": "email_delete_email",
        "arguments": '{"email_id": "00000479"}',
    }
    assert (
        parse_call(
            "customer_relationship_manager.update_customer.func(customer_id='1', field='status', new_value='Won')"
        )["name"]
        == "customer_relationship_manager_update_customer"
    )
    assert parse_answer("[\"email.send_email.func(recipient='a@b.c', subject='s', body='x')\"]") == [
        {"name": "email_send_email", "arguments": '{"recipient": "a@b.c", "subject": "s", "body": "x"}'}
    ]


def test_quoted_email_bodies_match_the_query_text(workbench_rows):
    """WorkBench queries show line breaks as the two characters backslash-n; the answers hold real newlines - what a
    model writes when it copies the text into a JSON string ("\\n" is a JSON newline escape)."""
    sends = [
        (row_query(r), json.loads(c["arguments"]))
        for r in workbench_rows
        for c in r["ground_truth"]
        if c["name"] == "email_send_email" and "\\n" in row_query(r)
    ]
    assert len(sends) >= 10
    for query, arguments in sends:
        assert "\n" in arguments["body"] and arguments["body"].replace("\n", "\\n") in query


@pytest.mark.parametrize(
    "text,message",
    [
        ("email.delete_email.func('1')", "positional arguments"),
        ("email.delete_email.func(email_id=__import__('os').getcwd())", "not a literal"),
        ("delete_email(email_id='1')", "expected <domain>.<tool>.func"),
        ("email.delete_email.func(**{'email_id': '1'})", r"\*\*kwargs"),
        ("email.delete_email.func(", "not a Python call expression"),
        ("[1, 2]", "not a function call"),
    ],
)
def test_parse_call_rejects_what_it_cannot_read_without_evaluating(text, message):
    with pytest.raises(WorkBenchFormatError, match=message):
        parse_call(text)


def test_parse_answer_requires_a_list_of_strings():
    assert parse_answer("[]") == []
    with pytest.raises(WorkBenchFormatError, match="not a list of call strings"):
        parse_answer("[1]")
    with pytest.raises(WorkBenchFormatError, match="not a Python list literal"):
        parse_answer("print('x')")


def test_convert_workbench_all_690_tasks(workbench_rows):
    assert len(workbench_rows) == 690
    assert [row["id"] for row in workbench_rows] == list(range(690))
    assert {row["category"] for row in workbench_rows} == set(CATEGORIES)
    first = workbench_rows[0]
    assert row_query(first) == "Can you make a bar chart of total visits since November 21?"
    assert first["ground_truth"] == [
        {
            "name": "analytics_create_plot",
            "arguments": json.dumps(
                {
                    "time_min": "2023-11-21",
                    "time_max": "2023-11-29",
                    "value_to_plot": "total_visits",
                    "plot_type": "bar",
                }
            ),
        }
    ]
    nadia = next(r for r in workbench_rows if row_query(r) == "Delete my last email from nadia")
    assert nadia["ground_truth"] == [{"name": "email_delete_email", "arguments": '{"email_id": "00000479"}'}]
    tasks = read_workbench()
    counts = Counter(task["source"].split("_queries")[0] for task in tasks)
    assert counts == {
        "analytics": 120,
        "calendar": 110,
        "customer_relationship_manager": 80,
        "email": 90,
        "multi_domain": 210,
        "project_management": 80,
    }


def test_multi_domain_category_rule(workbench_rows):
    tasks = read_workbench()
    for task, row in zip(tasks, workbench_rows):
        if len(task["domains"]) == 1:
            assert row["category"] == "workplace_assistant_" + task["domains"][0]
        elif task["ground_truth"]:  # the first domain the task changes
            assert row["ground_truth"][0]["name"].startswith(row["category"][len("workplace_assistant_") :])
    crm_meeting = next(
        r for r, t in zip(workbench_rows, tasks) if t["domains"] == ["customer_relationship_manager", "calendar"]
    )
    assert crm_meeting["category"] == "workplace_assistant_calendar"
    # A false-condition task takes the category its template acts on ("...schedule a half hour meeting").
    yuki = next(r for r in workbench_rows if row_query(r).startswith("if yuki hasn't sent me any emails"))
    assert yuki["ground_truth"] == [] and yuki["category"] == "workplace_assistant_calendar"


def test_converted_ground_truths_replay_without_tool_errors(workbench_rows):
    problems = [p for row in workbench_rows for p in validate_row(row)]
    assert problems == []
    # Two WorkBench tasks reassign a customer to their current owner: valid calls that change nothing.
    no_ops = [row["id"] for row in workbench_rows if validate_row(row, strict=True)]
    assert len(no_ops) == 2


# --- generator ----------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_and_seed_dependent():
    assert generate_rows(40, seed=3) == generate_rows(40, seed=3)
    assert [row_query(r) for r in generate_rows(40, seed=3)] != [row_query(r) for r in generate_rows(40, seed=4)]


def test_generated_rows_have_the_dataset_format(generated):
    assert [row["id"] for row in generated] == list(range(1255))
    assert len({row_query(row) for row in generated}) == 1255
    for row in generated[:50]:
        assert list(row) == ["id", "responses_create_params", "ground_truth", "category", "environment_name"]
        assert row["responses_create_params"]["tools"] == TOOL_SCHEMAS
        assert row["responses_create_params"]["input"][0] == {"role": "system", "content": SYSTEM_PROMPT}


def test_generated_rows_validate_strictly(generated):
    problems = [p for row in generated for p in validate_row(row, strict=True)]
    assert problems == []


def test_generated_mix_is_realistic(generated):
    tasks = generate_tasks(1255, seed=42)
    categories = Counter(row["category"] for row in generated)
    assert set(categories) == set(CATEGORIES)
    assert all(0.12 < count / 1255 < 0.3 for count in categories.values()), categories
    assert len({template.name for template, _ in tasks}) >= 30
    calls = Counter(len(row["ground_truth"]) for row in generated)
    assert 0.03 < calls[0] / 1255 < 0.3  # conditional and information-only tasks
    assert sum(v for k, v in calls.items() if k >= 2) > 100  # bulk updates and multi-call tasks
    difficulty = Counter(template.difficulty for template, _ in tasks)
    assert difficulty["easy"] > 200 and difficulty["hard"] > 200
    crm_calls = [len(r["ground_truth"]) for r in generated if r["category"].endswith("relationship_manager")]
    assert max(crm_calls) >= 3


def test_generated_ground_truth_rewards_itself_and_no_op_only_when_empty(generated):
    for row in generated[:400]:
        gt = row["ground_truth"]
        assert verify(gt, gt).reward == 1.0
        no_op = verify([], gt)
        assert no_op.reward == (0.0 if gt else 1.0), row_query(row)
        assert no_op.diagnostics["ground_truth_changes_state"] == bool(gt)


def test_category_filter_and_errors():
    rows = generate_rows(30, seed=1, categories=["workplace_assistant_calendar", "analytics"], start_id=100)
    assert {r["category"] for r in rows} == {"workplace_assistant_calendar", "workplace_assistant_analytics"}
    assert rows[0]["id"] == 100
    with pytest.raises(ValueError, match="unknown category 'workplace_assistant_hr'"):
        generate_rows(3, seed=1, categories=["workplace_assistant_hr"])
    with pytest.raises(ValueError, match="n must be non-negative"):
        generate_rows(-1, seed=1)


def test_every_template_builds_valid_tasks():
    import random

    snapshot = initial_snapshot()
    for template in TEMPLATES:
        rng = random.Random(template.name)
        built = [t for t in (template.build(rng, snapshot) for _ in range(30)) if t is not None]
        assert built, template.name
        for task in built[:5]:
            row = make_row(0, task.query, task.ground_truth, template.domain)
            assert validate_row(row, strict=True) == [], (template.name, task.query)


# --- the generator's queries reproduce the real dataset's ground truths -------------------------------------------


def test_snapshot_queries_match_the_real_dataset_rows():
    snap = initial_snapshot()
    ids = lambda customers: [c["customer_id"] for c in customers]  # noqa: E731
    # id 0: "Reply to carlos's last email about 'Task Update on Develop prototype for report generation' ..."
    email = snap.latest_email_from(snap.email_of["carlos"], "Task Update on Develop prototype for report generation")
    assert email["email_id"] == "00000057"
    # id 1: "Can you change the name of the last event on December 1 to Risk Management Forum"
    assert snap.events_by_day["2023-12-01"][-1]["event_id"] == "00000252"
    # id 2: "Raj is taking over all of Akira's leads that are interested in software."
    assert ids(snap.customers_where("akira.sato@atlas.com", "Lead", "Software")) == ["00000095", "00000080", "00000035"]
    # id 3: "... all of Lena's customers that are in the won stage and interested in services ... delete them"
    assert ids(snap.customers_where("lena.schmidt@atlas.com", "Won", "Services")) == [
        "00000009",
        "00000112",
        "00000039",
        "00000047",
    ]
    # id 4: "Move all customers that haven't responded to a proposal for the hardware product in 4 weeks to lost"
    assert ids(snap.stale_proposals("Hardware", 4)) == ["00000037", "00000195", "00000058", "00000132", "00000088"]
    # rollout: "Delete my last email from kofi" (WorkBench answer 00000259)
    assert snap.latest_email_from(snap.email_of["kofi"])["email_id"] == "00000259"


def test_latest_email_agrees_with_the_search_tool():
    """Cross-check against the tools: the search tool sorts newest first."""
    snap = initial_snapshot()
    db = Database.fresh()
    for person in snap.people[:8]:
        address = snap.email_of[person]
        arguments = json.dumps({"query": address, "page_size": 1})
        found = json.loads(execute_call(call_tool, db, "email_search_emails", arguments))
        expected = snap.latest_email_from(address)
        if expected is None:
            continue
        assert found["output"]["emails"][0]["email_id"] == expected["email_id"]


# --- commands -----------------------------------------------------------------------------------------------------


def _run_command(argv):
    import argparse

    from env_sim.workplace_assistant.tasks.commands import add_task_commands

    parser = argparse.ArgumentParser()
    add_task_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_generate_and_convert_commands_write_rows(tmp_path, capsys):
    out = tmp_path / "generated.jsonl"
    assert _run_command(["generate", "--n", "25", "--seed", "5", "--output", str(out), "--start-id", "10"]) == 0
    assert list(read_rows(out)) == generate_rows(25, seed=5, start_id=10)
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 25 and summary["rows_with_problems"] == 0
    out = tmp_path / "workbench.jsonl"
    assert _run_command(["convert-workbench", "--output", str(out)]) == 0
    assert sum(1 for _ in read_rows(out)) == 690
    assert json.loads(capsys.readouterr().out)["rows_with_problems"] == 0


@pytest.mark.parametrize(
    "metric,tool",
    [
        ("total_visits", "analytics_total_visits_count"),
        ("user_engaged", "analytics_engaged_users_count"),
        ("session_duration_seconds", "analytics_get_average_session_duration"),
    ],
)
def test_daily_metrics_agree_with_the_analytics_tools(metric, tool):
    """The conditional analytics templates decide with the same numbers the model can read from the tools."""
    snap = initial_snapshot()
    db = Database.fresh()
    for start, end in [("2023-11-01", "2023-11-29"), ("2023-09-15", "2023-10-02")]:
        arguments = json.dumps({"time_min": start, "time_max": end})
        output = json.loads(execute_call(call_tool, db, tool, arguments))["output"]
        mine = snap.daily_metric(metric, start, end)
        assert set(output) == set(mine)
        assert all(abs(float(output[d]) - mine[d]) < 1e-9 for d in mine)


def test_python_m_env_sim_generate_and_convert(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "rows.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "env_sim", "generate", "--n", "12", "--seed", "42", "--output", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(read_rows(out)) == generate_rows(12, seed=42)
    done = subprocess.run(
        [sys.executable, "-m", "env_sim", "convert-workbench", "--output", str(tmp_path / "wb.jsonl"), "--no-check"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 690


def test_difficulty_filter_keeps_only_those_templates():
    from env_sim.workplace_assistant.tasks.generator import TEMPLATES, generate_tasks, templates_of

    easy = templates_of(["easy"])
    assert easy and all(t.difficulty == "easy" for t in easy) and len(easy) < len(TEMPLATES)
    assert {t.difficulty for t, _ in generate_tasks(40, 3, templates=easy)} == {"easy"}
    with pytest.raises(ValueError, match="trivial"):
        templates_of(["trivial"])
