"""Calendar toolkit: look up, search, create, delete and update events."""

from __future__ import annotations

from env_sim.workplace_assistant.tools.pandas_semantics import (
    GE,
    LE,
    array_contains,
    compile_contains,
    paginate,
    series_eq,
    series_max,
    timestamps_compare,
    to_timestamp,
)
from env_sim.workplace_assistant.tools.schema import function_schema

_INFO_FIELDS = ["event_id", "event_name", "participant_email", "event_start", "duration"]
_UPDATE_FIELDS = ["event_name", "participant_email", "event_start", "duration"]


def _is_event_id(event_id) -> bool:
    return isinstance(event_id, str) and len(event_id) == 8 and event_id.isdigit()


class CalendarTool:
    """The reference's CalendarTool over our tables (class and parameter names kept for error texts)."""

    def __init__(self, db):
        self._db = db

    def get_event_information_by_id(self, event_id=None, field=None):
        if not event_id:
            return "Event ID not provided."
        if not field:
            return "Field not provided."
        if not _is_event_id(event_id):
            return "Invalid event ID format. Expected 8-digit ID."
        if field not in _INFO_FIELDS:
            return f"Invalid field. Available fields are: {', '.join(_INFO_FIELDS)}"
        t = self._db.calendar_events
        for pos, hit in enumerate(series_eq(t.column("event_id"), event_id)):
            if hit:
                return {field: t.record(pos)[field]}
        return "Event not found."

    def search_events(self, query="", time_min=None, time_max=None, page=1, page_size=5):
        if time_min:
            try:
                time_min = to_timestamp(time_min)
            except ValueError:
                return "Invalid time_min format. Expected YYYY-MM-DD HH:MM:SS."
        if time_max:
            try:
                time_max = to_timestamp(time_max)
            except ValueError:
                return "Invalid time_max format. Expected YYYY-MM-DD HH:MM:SS."
        t = self._db.calendar_events
        rx = compile_contains(query, case=False)
        ni, pi = t.index_of["event_name"], t.index_of["participant_email"]
        events = [
            dict(zip(t.columns, row))
            for row in t.rows
            if (isinstance(row[ni], str) and rx.search(row[ni]) is not None)
            or (isinstance(row[pi], str) and rx.search(row[pi]) is not None)
        ]
        if time_min:
            events = [e for e in events if timestamps_compare(to_timestamp(e["event_start"]), time_min, GE)]
        if time_max:
            events = [e for e in events if timestamps_compare(to_timestamp(e["event_start"]), time_max, LE)]
        if events:
            stamps = [to_timestamp(e["event_start"]) for e in events]
            try:
                order = sorted(range(len(events)), key=stamps.__getitem__, reverse=True)  # newest first, stable
            except TypeError:  # an event created with a time zone among naive ones
                raise TypeError("Cannot compare tz-naive and tz-aware timestamps") from None
            events = [events[i] for i in order]
            total = len(events)
            page, total_pages, start, end = paginate(total, page, page_size)
            return {
                "events": events[start:end],
                "pagination": {"total_events": total, "page": page, "page_size": page_size, "total_pages": total_pages},
            }
        return "No events found."

    def create_event(self, event_name=None, participant_email=None, event_start=None, duration=None):
        if not event_name:
            return "Event name not provided."
        if not participant_email:
            return "Participant email not provided."
        if not event_start:
            return "Event start not provided."
        if not duration:
            return "Event duration not provided."
        try:
            to_timestamp(event_start)
        except ValueError:
            return "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS."
        try:
            if int(duration) <= 0:
                return "Duration must be a positive number of minutes."
        except ValueError:
            return "Invalid duration format. Expected a number of minutes."
        participant_email = participant_email.lower()
        t = self._db.calendar_events
        event_id = str(int(series_max(t.column("event_id"))) + 1).zfill(8)
        # pd.concat without ignore_index: the new row carries the label 0
        t.append(
            {
                "event_id": event_id,
                "event_name": event_name,
                "participant_email": participant_email,
                "event_start": event_start,
                "duration": duration,
            },
            renumber=False,
            label=0,
        )
        return event_id

    def delete_event(self, event_id=None):
        if not event_id:
            return "Event ID not provided."
        if not _is_event_id(event_id):
            return "Invalid event ID format. Expected 8-digit ID."
        t = self._db.calendar_events
        ids = t.column("event_id")
        if array_contains(ids, event_id):
            t.keep([not hit for hit in series_eq(ids, event_id)])
            return "Event deleted successfully."
        return "Event not found."

    def update_event(self, event_id=None, field=None, new_value=None):
        if not event_id or not field or not new_value:
            return "Event ID, field, or new value not provided."
        if not _is_event_id(event_id):
            return "Invalid event ID format. Expected 8-digit ID."
        if field not in _UPDATE_FIELDS:
            return f"Invalid field. Available fields are: {', '.join(_UPDATE_FIELDS)}"
        if field == "event_start":
            try:
                to_timestamp(new_value)
            except ValueError:
                return "Invalid event_start format. Expected YYYY-MM-DD HH:MM:SS."
        elif field == "duration":
            try:
                if int(new_value) <= 0:
                    return "Duration must be a positive number of minutes."
            except ValueError:
                return "Invalid duration format. Expected a number of minutes."
        t = self._db.calendar_events
        ids = t.column("event_id")
        if array_contains(ids, event_id):
            if field == "participant_email":
                new_value = new_value.lower()
            t.set_where(series_eq(ids, event_id), field, new_value)
            return "Event updated successfully."
        return "Event not found."


SCHEMAS = [
    function_schema(
        "calendar_get_event_information_by_id",
        "Returns the event for a given ID.",
        [
            ("event_id", "8-digit ID of the event"),
            (
                "field",
                "Field to return. Available fields are: 'event_id', 'event_name', 'participant_email', "
                "'event_start', 'duration'",
            ),
        ],
        ["event_id", "field"],
    ),
    function_schema(
        "calendar_search_events",
        "Returns the events for a given query with pagination support.",
        [
            ("query", "Query to search for. Terms will be matched in the event_name and participant_email fields"),
            ("time_min", "Lower bound (inclusive) for an event's end time to filter by. Format: YYYY-MM-DD HH:MM:SS"),
            ("time_max", "Upper bound (inclusive) for an event's start time to filter by. Format: YYYY-MM-DD HH:MM:SS"),
            ("page", "Page number of results to return", "integer"),
            ("page_size", "Number of events per page", "integer"),
        ],
        [],
    ),
    function_schema(
        "calendar_create_event",
        "Creates a new event.",
        [
            ("event_name", "Name of the event"),
            ("participant_email", "Email of the participant"),
            ("event_start", "Start time of the event. Format: YYYY-MM-DD HH:MM:SS"),
            ("duration", "Duration of the event in minutes"),
        ],
        ["event_name", "participant_email", "event_start", "duration"],
    ),
    function_schema(
        "calendar_delete_event",
        "Deletes an event.",
        [("event_id", "8-digit ID of the event")],
        ["event_id"],
    ),
    function_schema(
        "calendar_update_event",
        "Updates an event.",
        [
            ("event_id", "8-digit ID of the event"),
            (
                "field",
                "Field to update. Available fields are: 'event_name', 'participant_email', 'event_start', 'duration'",
            ),
            ("new_value", "New value for the field"),
        ],
        ["event_id", "field", "new_value"],
    ),
]
