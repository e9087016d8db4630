"""The reference's own examples: recorded tool outputs and rewards must come out identical.

``data/example_rollouts.jsonl`` holds 5 rollouts (gpt-4.1 against the reference server) with the
reward the reference gave; their rows' ground truths were not published with them, so each is
rebuilt below from the CSVs with the WorkBench template that generated the task (see
queries_and_answers in WorkBench: "since <date>" plots end yesterday, 2023-11-29; "haven't
responded in N weeks" means status Proposal and last contact before today - N weeks).
"""

import csv
import datetime as dt
import json
from pathlib import Path

import pytest

from env_sim.execute import execute_call
from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import DATA_DIR, Database
from env_sim.workplace_assistant.verify import verify

DATA = Path(__file__).parent / "data"
TODAY = dt.date(2023, 11, 30)


def _csv(name):
    with open(DATA_DIR / "processed" / f"{name}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _call(name, **kwargs):
    return {"name": name, "arguments": json.dumps(kwargs)}


def _ground_truth(user_text: str) -> list:
    text = user_text.lower()
    if text.startswith("create a bar chart of total visits since november 30"):
        return [
            _call(
                "analytics_create_plot",
                time_min="2023-11-30",
                time_max="2023-11-29",
                value_to_plot="total_visits",
                plot_type="bar",
            )
        ]
    if "haven't responded to a proposal for the consulting product in 3 weeks" in text:
        cutoff = str(TODAY - dt.timedelta(weeks=3))
        stale = [
            c
            for c in _csv("customer_relationship_manager_data")
            if c["product_interest"] == "Consulting"
            and c["status"] == "Proposal"
            and c["last_contact_date"][:10] < cutoff
        ]
        return [
            _call(
                "customer_relationship_manager_update_customer",
                customer_id=c["customer_id"],
                field="status",
                new_value="Lost",
            )
            for c in stale
        ]
    if text.startswith("delete casey wilson from the crm"):
        (cid,) = [
            c["customer_id"] for c in _csv("customer_relationship_manager_data") if c["customer_name"] == "Casey Wilson"
        ]
        return [_call("customer_relationship_manager_delete_customer", customer_id=cid)]
    if text.startswith("add dakota thomas as a new lead"):
        with open(DATA_DIR / "raw" / "email_addresses.csv") as fh:
            (nadia,) = [line.strip() for line in fh if line.startswith("nadia")]
        return [
            _call(
                "customer_relationship_manager_add_customer",
                customer_name="Dakota Thomas",
                assigned_to_email=nadia,
                status="Lead",
            )
        ]
    if text.startswith("delete my last email from kofi"):
        kofi = [e for e in _csv("emails") if e["sender/recipient"].startswith("kofi")]
        latest = max(kofi, key=lambda e: e["sent_datetime"])
        return [_call("email_delete_email", email_id=latest["email_id"])]
    raise AssertionError(f"no ground truth known for: {user_text}")


def _rollouts():
    return [json.loads(line) for line in (DATA / "example_rollouts.jsonl").read_text().splitlines() if line.strip()]


def _rows():
    return [json.loads(line) for line in (DATA / "example.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("index", range(5))
def test_recorded_tool_outputs_are_reproduced_exactly(index):
    rollout = _rollouts()[index]
    outputs = {o["call_id"]: o["output"] for o in rollout["response"]["output"] if o["type"] == "function_call_output"}
    db = Database.fresh()
    calls = [o for o in rollout["response"]["output"] if o["type"] == "function_call"]
    assert calls
    for item in calls:
        assert execute_call(call_tool, db, item["name"], item["arguments"]) == outputs[item["call_id"]]


@pytest.mark.parametrize("index", range(5))
def test_recorded_rewards_are_reproduced(index):
    rollout = _rollouts()[index]
    user = rollout["responses_create_params"]["input"][-1]["content"]
    predicted = [o for o in rollout["response"]["output"] if o["type"] == "function_call"]
    verdict = verify(predicted, _ground_truth(user))
    assert verdict.reward == rollout["reward"]


def test_the_rewards_are_not_all_alike():
    # the set contains a failure (wrong plot range) and a success with an empty ground truth
    assert sorted(r["reward"] for r in _rollouts()) == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert any(_ground_truth(r["responses_create_params"]["input"][-1]["content"]) == [] for r in _rollouts())


@pytest.mark.parametrize("index", range(5))
def test_dataset_rows_ground_truth_executes_and_scores(index):
    row = _rows()[index]
    gt = row["ground_truth"]
    db = Database.fresh()
    for c in gt:
        out = call_tool(db, c["name"], json.loads(c["arguments"]))
        assert isinstance(out, str) and out.endswith("successfully."), out
    assert verify(gt, gt).reward == 1.0
    assert verify([], gt).reward == 0.0
    assert verify(gt[:-1], gt).reward == 0.0
    assert verify(gt, json.dumps(gt)).reward == 1.0  # ground truth may arrive JSON-encoded
    assert row["category"].startswith("workplace_assistant_") and row["environment_name"] == "workplace_assistant"
