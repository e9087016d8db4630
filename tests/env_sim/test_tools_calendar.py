"""Calendar tools: success and error paths, 8-digit zero-padded ID rule, validation, index labels."""

import pytest

from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import Database

NEW = {
    "event_name": "Sync",
    "participant_email": "Raj.Patel@atlas.com",
    "event_start": "2023-12-05 10:00:00",
    "duration": "60",
}


@pytest.fixture
def db():
    return Database.fresh()


def test_get_event_information(db):
    f = "calendar_get_event_information_by_id"
    assert call_tool(db, f, {"event_id": "00000252", "field": "event_name"}) == {"event_name": "brainstorming session"}
    assert (
        call_tool(db, f, {"event_id": "252", "field": "event_name"}) == "Invalid event ID format. Expected 8-digit ID."
    )
    assert call_tool(db, f, {"event_id": 252, "field": "event_name"}) == "Invalid event ID format. Expected 8-digit ID."
    assert call_tool(db, f, {"event_id": "00000252", "field": "name"}) == (
        "Invalid field. Available fields are: event_id, event_name, participant_email, event_start, duration"
    )
    assert call_tool(db, f, {"event_id": "00009999", "field": "event_name"}) == "Event not found."
    assert call_tool(db, f, {"field": "event_name"}) == "Event ID not provided."
    assert call_tool(db, f, {"event_id": "00000252"}) == "Field not provided."


def test_search_events(db):
    out = call_tool(
        db, "calendar_search_events", {"time_min": "2023-12-01 00:00:00", "time_max": "2023-12-01 23:59:59"}
    )
    starts = [e["event_start"] for e in out["events"]]
    assert starts == sorted(starts, reverse=True) and all(s.startswith("2023-12-01") for s in starts)
    assert out["pagination"] == {"total_events": 6, "page": 1, "page_size": 5, "total_pages": 2}
    page2 = call_tool(
        db, "calendar_search_events", {"time_min": "2023-12-01", "time_max": "2023-12-01 23:59:59", "page": 2}
    )
    assert len(page2["events"]) == 1 and page2["pagination"]["page"] == 2
    by_mail = call_tool(db, "calendar_search_events", {"query": "AISHA.chen", "page_size": 500})
    assert by_mail["events"] and all(e["participant_email"] == "aisha.chen@atlas.com" for e in by_mail["events"])
    assert call_tool(db, "calendar_search_events", {"query": "zzzz"}) == "No events found."
    assert call_tool(db, "calendar_search_events", {"time_min": "someday"}) == (
        "Invalid time_min format. Expected YYYY-MM-DD HH:MM:SS."
    )
    assert call_tool(db, "calendar_search_events", {"time_max": "2023-13-45"}) == (
        "Invalid time_max format. Expected YYYY-MM-DD HH:MM:SS."
    )
    assert call_tool(db, "calendar_search_events", {"query": "["}).startswith(
        "Error executing tool 'calendar_search_events': unterminated character set"
    )


def test_create_event_id_rule_and_label(db):
    assert call_tool(db, "calendar_create_event", NEW) == "00000300"
    row = db.calendar_events.record(len(db.calendar_events) - 1)
    assert row == {**NEW, "event_id": "00000300", "participant_email": "raj.patel@atlas.com"}
    assert db.calendar_events.labels[-1] == 0  # plain pd.concat: the new row's label is 0
    assert call_tool(db, "calendar_create_event", {**NEW, "duration": 30}) == "00000301"
    assert db.calendar_events.record(301)["duration"] == 30  # stored as given (an int, not "30")


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"event_name": None}, "Event name not provided."),
        ({"participant_email": ""}, "Participant email not provided."),
        ({"event_start": None}, "Event start not provided."),
        ({"duration": None}, "Event duration not provided."),
        ({"event_start": "tomorrow at 10"}, "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS."),
        ({"duration": "-5"}, "Duration must be a positive number of minutes."),
        ({"duration": "1 hour"}, "Invalid duration format. Expected a number of minutes."),
        (
            {"duration": [1]},
            "Error executing tool 'calendar_create_event': int() argument must be a string, "
            "a bytes-like object or a real number, not 'list'",
        ),
    ],
)
def test_create_event_validation(db, change, expected):
    assert call_tool(db, "calendar_create_event", {**NEW, **change}) == expected
    assert len(db.calendar_events) == 300


def test_delete_and_update_event(db):
    assert (
        call_tool(
            db,
            "calendar_update_event",
            {"event_id": "00000252", "field": "event_name", "new_value": "Risk Management Forum"},
        )
        == "Event updated successfully."
    )
    assert call_tool(db, "calendar_get_event_information_by_id", {"event_id": "00000252", "field": "event_name"}) == {
        "event_name": "Risk Management Forum"
    }
    assert (
        call_tool(
            db,
            "calendar_update_event",
            {"event_id": "00000252", "field": "participant_email", "new_value": "NIA.johnson@atlas.com"},
        )
        == "Event updated successfully."
    )
    assert call_tool(
        db, "calendar_get_event_information_by_id", {"event_id": "00000252", "field": "participant_email"}
    ) == {"participant_email": "nia.johnson@atlas.com"}
    u = "calendar_update_event"
    assert call_tool(db, u, {"event_id": "00000252", "field": "event_id", "new_value": "1"}) == (
        "Invalid field. Available fields are: event_name, participant_email, event_start, duration"
    )
    assert call_tool(db, u, {"event_id": "00000252", "field": "duration", "new_value": "0"}) == (
        "Duration must be a positive number of minutes."
    )
    assert call_tool(db, u, {"event_id": "00000252", "field": "event_start", "new_value": "x"}) == (
        "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS."
    )
    assert call_tool(db, u, {"event_id": "00009999", "field": "duration", "new_value": "30"}) == "Event not found."
    assert call_tool(db, u, {"event_id": "00000252", "field": "duration"}) == (
        "Event ID, field, or new value not provided."
    )
    assert call_tool(db, "calendar_delete_event", {"event_id": "00000252"}) == "Event deleted successfully."
    assert call_tool(db, "calendar_delete_event", {"event_id": "00000252"}) == "Event not found."
    assert (
        call_tool(db, "calendar_delete_event", {"event_id": "252"}) == "Invalid event ID format. Expected 8-digit ID."
    )
    assert call_tool(db, "calendar_delete_event", {}) == "Event ID not provided."
    assert len(db.calendar_events) == 299


def test_time_zone_in_event_start_breaks_later_searches_like_pandas(db):
    assert call_tool(db, "calendar_create_event", {**NEW, "event_start": "2023-12-01 10:00:00Z"}) == "00000300"
    assert call_tool(db, "calendar_search_events", {}) == (
        "Error executing tool 'calendar_search_events': Cannot compare tz-naive and tz-aware timestamps"
    )
