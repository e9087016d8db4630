"""The verifier: state comparison with the reference's normalisation and diagnostics."""

import json

import pytest

from env_sim.workplace_assistant.database import Database
from env_sim.workplace_assistant.verify import Verdict, replay, verify


def call(name, **kwargs):
    return {"name": name, "arguments": json.dumps(kwargs)}


EVENT = dict(
    event_name="Sync", participant_email="raj.patel@atlas.com", event_start="2023-12-05 10:00:00", duration="60"
)


def test_identical_and_empty():
    gt = [call("email_reply_email", email_id="00000057", body="Thanks")]
    v = verify(gt, gt)
    assert isinstance(v, Verdict) and v.reward == 1.0
    assert v.diagnostics == {
        "num_predicted_calls": 1,
        "num_predicted_errors": 0,
        "predicted_changed_state": True,
        "ground_truth_changes_state": True,
        "tables_differ": [],
    }
    assert verify([], gt).reward == 0.0 and verify([], gt).diagnostics["tables_differ"] == ["email"]
    assert verify([], []).reward == 1.0


def test_reads_and_failed_calls_do_not_matter_but_extra_writes_do():
    gt = [call("calendar_delete_event", event_id="00000252")]
    pred = [
        call("calendar_search_events", query="brainstorming"),
        call("nope"),
        {"name": "calendar_delete_event", "arguments": "{not json"},
        *gt,
    ]
    v = verify(pred, gt)
    assert v.reward == 1.0 and v.diagnostics["num_predicted_errors"] == 2 and v.diagnostics["num_predicted_calls"] == 4
    extra = verify(pred + [call("email_delete_email", email_id="00000001")], gt)
    assert extra.reward == 0.0 and extra.diagnostics["tables_differ"] == ["email"]


def test_case_insensitive_except_status_list_board():
    gt = [call("calendar_update_event", event_id="00000252", field="event_name", new_value="Risk Management Forum")]
    assert (
        verify(
            [call("calendar_update_event", event_id="00000252", field="event_name", new_value="risk MANAGEMENT forum")],
            gt,
        ).reward
        == 1.0
    )
    gt_crm = [
        call("customer_relationship_manager_add_customer", customer_name="A", assigned_to_email="a@b.c", status="Lead")
    ]
    assert (
        verify(
            [
                call(
                    "customer_relationship_manager_add_customer",
                    customer_name="a",
                    assigned_to_email="A@B.C",
                    status="Lead",
                )
            ],
            gt_crm,
        ).reward
        == 1.0
    )
    # status is compared as written (add_customer does not validate it)
    assert (
        verify(
            [
                call(
                    "customer_relationship_manager_add_customer",
                    customer_name="A",
                    assigned_to_email="a@b.c",
                    status="lead",
                )
            ],
            gt_crm,
        ).reward
        == 0.0
    )


def test_type_differences_60_vs_string_60():
    gt = [call("calendar_create_event", **EVENT)]
    assert verify([call("calendar_create_event", **{**EVENT, "duration": 60})], gt).reward == 0.0
    # both sides storing the int lower-case to NaN and then match (pandas semantics)
    both = [call("calendar_create_event", **{**EVENT, "duration": 60})]
    assert verify(both, both).reward == 1.0


def test_order_and_index_labels_matter():
    send = call("email_send_email", recipient="a@b.c", subject="s", body="b")
    delete = call("email_delete_email", email_id="00000010")
    # same rows either way, but send renumbers the index while delete keeps labels: DataFrame.equals differs
    assert verify([delete, send], [send, delete]).reward == 0.0
    assert verify([delete, send], [delete, send]).reward == 1.0
    a = call("calendar_delete_event", event_id="00000252")
    b = call("calendar_delete_event", event_id="00000093")
    assert verify([a, b], [b, a]).reward == 1.0


def test_none_arguments_are_kept_in_replay():
    # the replay calls tool(**json.loads(arguments)): notes=None is stored as missing, not ""
    base = dict(customer_name="A", assigned_to_email="a@b.c", status="Lead")
    assert (
        verify(
            [call("customer_relationship_manager_add_customer", **base, notes=None)],
            [call("customer_relationship_manager_add_customer", **base)],
        ).reward
        == 0.0
    )


def test_ground_truth_as_json_string_and_bad_input():
    gt = [call("email_delete_email", email_id="00000259")]
    assert verify(gt, json.dumps(gt)).reward == 1.0
    with pytest.raises(ValueError, match="ground_truth"):
        verify(gt, "{broken")
    with pytest.raises(ValueError, match="predicted"):
        verify({"name": "x"}, gt)


def test_unchanged_state_flags_and_replay_isolation():
    v = verify([call("calendar_update_event", event_id="00000252", field="duration", new_value="120")], [])
    # 00000252 already lasts 120 minutes: the write changed nothing, so the empty ground truth matches
    assert v.reward == 1.0 and v.diagnostics["predicted_changed_state"] is False
    db, errors = replay([call("email_delete_email", email_id="00000001")])
    assert errors == [] and len(db.emails) == 499 and len(Database.fresh().emails) == 500


# --- the CLI: python -m env_sim verify ----------------------------------------------------------------


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_cli_verify_writes_rewards_and_diagnostics(tmp_path):
    from env_sim.cli import main

    gt = [call("email_delete_email", email_id="00000259")]
    _write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "a", "predicted": gt, "ground_truth": gt}),
            "",
            json.dumps({"id": 2, "predicted": [], "ground_truth": json.dumps(gt)}),
        ],
    )
    assert main(["verify", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out" / "o.jsonl")]) == 0
    out = [json.loads(line) for line in (tmp_path / "out" / "o.jsonl").read_text().splitlines()]
    assert [(o["id"], o["reward"]) for o in out] == [("a", 1.0), (2, 0.0)]
    assert out[1]["tables_differ"] == ["email"] and out[1]["predicted_changed_state"] is False
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp file left


@pytest.mark.parametrize(
    "bad_line,message",
    [
        ("{not json", "in.jsonl:2: not valid JSON"),
        ('{"id": 1, "predicted": []}', "in.jsonl:2: missing key 'ground_truth'"),
        ('{"id": 1, "predicted": "x", "ground_truth": []}', "in.jsonl:2: 'predicted' must be a list"),
        ("[1]", "in.jsonl:2: expected a JSON object"),
        ('{"id": NaN, "predicted": [], "ground_truth": []}', "in.jsonl:2: NaN is not JSON"),
    ],
)
def test_cli_verify_names_the_bad_line(tmp_path, capsys, bad_line, message):
    from env_sim.cli import main

    good = json.dumps({"id": 0, "predicted": [], "ground_truth": []})
    _write_lines(tmp_path / "in.jsonl", [good, bad_line])
    out = tmp_path / "o.jsonl"
    assert main(["verify", "--input", str(tmp_path / "in.jsonl"), "--output", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


def test_cli_verify_names_a_line_that_is_not_utf8(tmp_path, capsys):
    from env_sim.cli import main

    (tmp_path / "in.jsonl").write_bytes(b'{"id": 0, "predicted": [], "ground_truth": []}\n{"id": "\xff"}\n')
    assert main(["verify", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 2
    assert "in.jsonl:2: not UTF-8 (byte 0xff at column 9)" in capsys.readouterr().err


def test_cli_verify_reports_a_ground_truth_that_does_not_replay_instead_of_scoring_it(tmp_path, capsys):
    """An unknown tool or unparsable arguments in the ground truth leave the state untouched, so an empty
    prediction would score 1.0: such rows get no reward, and stderr names them."""
    from env_sim.cli import main

    good = [call("email_delete_email", email_id="00000259")]
    unknown = [{"name": "email_shred_email", "arguments": "{}"}]
    unparsable = [{"name": "email_delete_email", "arguments": "{email_id: 1"}]
    _write_lines(
        tmp_path / "in.jsonl",
        [
            json.dumps({"id": "ok", "predicted": good, "ground_truth": good}),
            json.dumps({"id": "unknown", "predicted": [], "ground_truth": unknown}),
            json.dumps({"id": "unparsable", "predicted": [], "ground_truth": unparsable}),
        ],
    )
    assert main(["verify", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl")]) == 1
    out = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [(o["id"], o["reward"]) for o in out] == [("ok", 1.0), ("unknown", None), ("unparsable", None)]
    err = capsys.readouterr().err
    assert "verified 1 trajectories, mean reward 1.0000" in err
    assert "in.jsonl:2: id='unknown': ground truth does not replay: call 0: unknown tool" in err
    assert (
        "in.jsonl:3: id='unparsable': ground truth does not replay: call 0 (email_delete_email): JSONDecodeError" in err
    )


def test_cli_registers_commands_for_extension():
    from env_sim.cli import _COMMANDS, build_parser

    assert {"verify", "serve"} <= set(_COMMANDS)
    args = build_parser().parse_args(["serve", "--port", "0"])
    assert args.port == 0 and callable(args._run)
