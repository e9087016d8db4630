"""Company directory and email tools: success and error paths, ID rule, reference quirks."""

import pytest

from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import CURRENT_TIME, Database


@pytest.fixture
def db():
    return Database.fresh()


def test_directory_lookup(db):
    assert call_tool(db, "company_directory_find_email_address", {"name": "Nadia"}) == ["nadia.moreau@atlas.com"]
    assert call_tool(db, "company_directory_find_email_address", {"name": "zzz"}) == []
    assert call_tool(db, "company_directory_find_email_address", {}) == "Name not provided."
    # the name is a regular expression (pandas str.contains): a bad one is an exception
    out = call_tool(db, "company_directory_find_email_address", {"name": "("})
    assert out.startswith("Error executing tool 'company_directory_find_email_address': missing ), unterminated")
    assert call_tool(db, "company_directory_find_email_address", {"name": 5}) == (
        "Error executing tool 'company_directory_find_email_address': 'int' object has no attribute 'lower'"
    )


def test_get_email_information(db):
    f = "email_get_email_information_by_id"
    assert call_tool(db, f, {"email_id": "00000057", "field": "sender/recipient"}) == {
        "sender/recipient": "carlos.rodriguez@atlas.com"
    }
    assert call_tool(db, f, {"email_id": "00000057"}) == "Field not provided."
    assert call_tool(db, f, {"field": "body"}) == "Email ID not provided."
    assert call_tool(db, f, {"email_id": "99999999", "field": "body"}) == "Email not found."
    assert call_tool(db, f, {"email_id": 57, "field": "body"}) == "Email not found."
    assert call_tool(db, f, {"email_id": "00000057", "field": "sender"}) == (
        "Field 'sender' not found. Available fields: email_id, inbox/outbox, sender/recipient, subject, "
        "sent_datetime, body"
    )
    assert call_tool(db, f, {"email_id": ["a", "b"], "field": "body"}) == (
        "Error retrieving email information: ('Lengths must match to compare', (500,), (2,))"
    )


def test_search_emails_newest_first_with_pagination(db):
    out = call_tool(db, "email_search_emails", {"query": "Carlos prototype REPORT generation"})
    assert [e["email_id"] for e in out["emails"]] == ["00000057", "00000280"]
    assert out["pagination"] == {"total_emails": 2, "page": 1, "page_size": 5, "total_pages": 1}
    page = call_tool(db, "email_search_emails", {"query": "kofi", "page": 99, "page_size": 3})
    assert page["pagination"]["page"] == page["pagination"]["total_pages"]  # clamped to the last page
    dated = call_tool(
        db,
        "email_search_emails",
        {"query": "kofi", "date_min": "2023-11-22", "date_max": "2023-11-22", "page_size": 50},
    )
    assert dated["emails"] and all(e["sent_datetime"].startswith("2023-11-22") for e in dated["emails"])
    assert call_tool(db, "email_search_emails", {"query": "no such words here"}) == "No emails found."
    assert call_tool(db, "email_search_emails", {"query": "kofi", "date_min": "foo"}) == (
        "Error searching emails: Unknown datetime string format, unable to parse: foo"
    )
    assert call_tool(db, "email_search_emails", {"query": "kofi", "page_size": 0}) == (
        "Error searching emails: integer division or modulo by zero"
    )
    # a bad date is only parsed when some email is left to compare (as in the reference)
    assert call_tool(db, "email_search_emails", {"query": "no such words", "date_min": "foo"}) == "No emails found."


def test_send_email_appends_an_outbox_row_with_id_max_plus_one(db):
    assert call_tool(db, "email_send_email", {"recipient": "Kofi.Mensah@atlas.com", "subject": "Hi", "body": "B"}) == (
        "Email sent successfully."
    )
    last = db.emails.record(len(db.emails) - 1)
    assert last == {
        "email_id": "500",
        "inbox/outbox": "outbox",
        "sender/recipient": "kofi.mensah@atlas.com",
        "subject": "Hi",
        "sent_datetime": CURRENT_TIME,
        "body": "B",
    }
    call_tool(db, "email_send_email", {"recipient": "a@b.c", "subject": "2", "body": "x"})
    assert db.emails.column("email_id")[-1] == "501"  # ids are not zero-padded for emails
    assert db.emails.labels == list(range(502))  # concat(ignore_index=True) renumbers


@pytest.mark.parametrize(
    "args,expected",
    [
        ({"recipient": "a@b.c", "subject": "s"}, "Recipient, subject, or body not provided."),
        ({"recipient": "nobody", "subject": "s", "body": "b"}, "Invalid recipient email address."),
        (
            {"recipient": "a@b.c", "subject": "s", "body": "b", "cc": "x"},
            "Error executing tool 'email_send_email': EmailTool.send_email() got an unexpected keyword argument 'cc'",
        ),
        (
            {"recipient": 5, "subject": "s", "body": "b"},
            "Error executing tool 'email_send_email': argument of type 'int' is not iterable",
        ),
    ],
)
def test_send_email_errors(db, args, expected):
    assert call_tool(db, "email_send_email", args) == expected
    assert len(db.emails) == 500


def test_delete_forward_reply(db):
    assert call_tool(db, "email_delete_email", {"email_id": "00000057"}) == "Email deleted successfully."
    assert call_tool(db, "email_delete_email", {"email_id": "00000057"}) == "Email not found."
    assert call_tool(db, "email_delete_email", {}) == "Email ID not provided."
    assert len(db.emails) == 499
    assert call_tool(db, "email_forward_email", {"email_id": "00000280", "recipient": "Nadia.Moreau@atlas.com"}) == (
        "Email forwarded successfully."
    )
    fw = db.emails.record(len(db.emails) - 1)
    assert fw["subject"] == "FW: Task Update on Develop prototype for report generation"
    assert fw["sender/recipient"] == "nadia.moreau@atlas.com"
    assert call_tool(db, "email_forward_email", {"email_id": "00000280"}) == "Email ID or recipient not provided."
    assert call_tool(db, "email_forward_email", {"email_id": "00000280", "recipient": "x"}) == (
        "Invalid recipient email address."
    )
    assert call_tool(db, "email_forward_email", {"email_id": "1", "recipient": "a@b.c"}) == "Email not found."
    assert (
        call_tool(db, "email_reply_email", {"email_id": "00000280", "body": "Thanks"}) == "Email replied successfully."
    )
    re_ = db.emails.record(len(db.emails) - 1)
    assert (re_["subject"], re_["sender/recipient"], re_["body"]) == (
        "RE: Task Update on Develop prototype for report generation",
        "carlos.rodriguez@atlas.com",
        "Thanks",
    )
    assert call_tool(db, "email_reply_email", {"email_id": "00000280"}) == "Email ID or body not provided."
    assert call_tool(db, "email_reply_email", {"email_id": "0", "body": "x"}) == "Email not found."


def test_delete_keeps_labels_of_remaining_rows(db):
    pos = db.emails.column("email_id").index("00000057")
    call_tool(db, "email_delete_email", {"email_id": "00000057"})
    assert pos not in db.emails.labels and len(db.emails.labels) == 499
    assert call_tool(db, "email_delete_email", {"email_id": ["a", "b"]}) == (
        "Error deleting email: operands could not be broadcast together with shapes (499,) (2,) "
    )
