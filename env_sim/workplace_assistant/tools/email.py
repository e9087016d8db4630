"""Email toolkit: read, search, send, delete, forward and reply to emails."""

from __future__ import annotations

from env_sim.workplace_assistant.database import CURRENT_TIME
from env_sim.workplace_assistant.tools.pandas_semantics import (
    array_contains,
    fmt,
    paginate,
    series_eq,
    series_max,
    to_timestamp,
)
from env_sim.workplace_assistant.tools.schema import function_schema


class EmailTool:
    """The reference's EmailTool over our tables (class and parameter names kept for error texts)."""

    def __init__(self, db):
        self._db = db

    def _first_match(self, email_id) -> dict | None:
        t = self._db.emails
        for pos, hit in enumerate(series_eq(t.column("email_id"), email_id)):
            if hit:
                return t.record(pos)
        return None

    def get_email_information_by_id(self, email_id=None, field=None):
        if not email_id:
            return "Email ID not provided."
        if not field:
            return "Field not provided."
        try:
            email = self._first_match(email_id)
            if email is None:
                return "Email not found."
            if field in email:
                return {field: email[field]}
            return f"Field '{field}' not found. Available fields: {', '.join(email)}"
        except Exception as e:
            return f"Error retrieving email information: {e}"

    def search_emails(self, query="", date_min=None, date_max=None, page=1, page_size=5):
        try:
            words = query.lower().split()
            t = self._db.emails
            hays = _haystacks(t)
            if len(words) == 1:
                w = words[0]
                hits = [pos for pos, h in enumerate(hays) if w in h]
            else:
                hits = [pos for pos, h in enumerate(hays) if all(w in h for w in words)]
            when = t.index_of["sent_datetime"]
            stamps = {pos: to_timestamp(t.rows[pos][when]) for pos in hits}
            # Newest first. pandas sorts with numpy's unstable quicksort: up to 16 rows it is an
            # insertion sort (ties keep table order); above that, on the reference's hardware, ties
            # (emails sent during the episode share one timestamp) come out newest-row first.
            if len(hits) <= 16:
                hits.sort(key=stamps.__getitem__, reverse=True)
            else:
                hits.sort(key=lambda p: (stamps[p], p), reverse=True)
            emails = t.records(hits)
            if date_min:
                lower = _Lazy(date_min)
                emails = [e for e in emails if to_timestamp(e["sent_datetime"]).date() >= lower.date()]
            if date_max:
                upper = _Lazy(date_max)  # inclusive: compared by calendar day
                emails = [e for e in emails if to_timestamp(e["sent_datetime"]).date() <= upper.date()]
            total = len(emails)
            page, total_pages, start, end = paginate(total, page, page_size)
            if len(emails):
                return {
                    "emails": emails[start:end],
                    "pagination": {
                        "total_emails": total,
                        "page": page,
                        "page_size": page_size,
                        "total_pages": total_pages,
                    },
                }
            return "No emails found."
        except Exception as e:
            return f"Error searching emails: {e}"

    def send_email(self, recipient=None, subject=None, body=None):
        if not recipient or not subject or not body:
            return "Recipient, subject, or body not provided."
        if "@" not in recipient or "." not in recipient:
            return "Invalid recipient email address."
        try:
            recipient = recipient.lower()
            t = self._db.emails
            email_id = str(int(series_max(t.column("email_id"))) + 1) if len(t) else "1"
            t.append(
                {
                    "email_id": email_id,
                    "inbox/outbox": "outbox",
                    "sender/recipient": recipient,
                    "subject": subject,
                    "sent_datetime": CURRENT_TIME,
                    "body": body,
                },
                renumber=True,
            )
            return "Email sent successfully."
        except Exception as e:
            return f"Error sending email: {e}"

    def delete_email(self, email_id=None):
        if not email_id:
            return "Email ID not provided."
        try:
            t = self._db.emails
            ids = t.column("email_id")
            if array_contains(ids, email_id):
                t.keep([not hit for hit in series_eq(ids, email_id)])
                return "Email deleted successfully."
            return "Email not found."
        except Exception as e:
            return f"Error deleting email: {e}"

    def forward_email(self, email_id=None, recipient=None):
        if not email_id or not recipient:
            return "Email ID or recipient not provided."
        if "@" not in recipient or "." not in recipient:
            return "Invalid recipient email address."
        try:
            if not array_contains(self._db.emails.column("email_id"), email_id):
                return "Email not found."
            recipient = recipient.lower()
            email = self._first_match(email_id)
            result = self.send_email(recipient, f"FW: {fmt(email['subject'])}", email["body"])
            if "Error" in result or "Invalid" in result:
                return result
            return "Email forwarded successfully."
        except Exception as e:
            return f"Error forwarding email: {e}"

    def reply_email(self, email_id=None, body=None):
        if not email_id or not body:
            return "Email ID or body not provided."
        try:
            if not array_contains(self._db.emails.column("email_id"), email_id):
                return "Email not found."
            email = self._first_match(email_id)
            # inbox: reply to the sender; outbox: to the original recipient -- the same column
            result = self.send_email(email["sender/recipient"], f"RE: {fmt(email['subject'])}", body)
            if "Error" in result or "Invalid" in result:
                return result
            return "Email replied successfully."
        except Exception as e:
            return f"Error replying to email: {e}"


_HAYSTACKS: dict = {}
_SNAPSHOT_HAYSTACKS: dict = {}  # id(snapshot rows list) -> haystacks; the snapshot lives for the process


def _haystacks(t) -> list:
    if not t._owned:  # still the snapshot's row list: computed once per process
        key = id(t.rows)
        hays = _SNAPSHOT_HAYSTACKS.get(key)
        if hays is None or len(hays) != len(t.rows):
            hays = _SNAPSHOT_HAYSTACKS[key] = [_haystack(t, row) for row in t.rows]
        return hays
    return [_haystack(t, row) for row in t.rows]


def _haystack(t, row: tuple) -> str:
    """The lower-cased "subject body sender" text searched for a row (cached per row: rows are immutable)."""
    try:
        text = _HAYSTACKS.get(row)
    except TypeError:  # a cell holds a list/dict the model sent: not cacheable
        text = cacheable = None
    else:
        cacheable = True
    if text is None:
        ix = t.index_of
        text = f"{fmt(row[ix['subject']])} {fmt(row[ix['body']])} {fmt(row[ix['sender/recipient']])}".lower()
        if cacheable:
            if len(_HAYSTACKS) > 100_000:
                _HAYSTACKS.clear()
            _HAYSTACKS[row] = text
    return text


class _Lazy:
    """Parses a date bound only when first compared (the reference parses it per email, so an
    unparsable bound only fails when some email is left to compare)."""

    def __init__(self, raw):
        self._raw, self._value = raw, None

    def date(self):
        if self._value is None:
            self._value = to_timestamp(self._raw).date()
        return self._value


SCHEMAS = [
    function_schema(
        "email_get_email_information_by_id",
        "Retrieves specific details of an email by its ID.",
        [
            ("email_id", "Unique ID of the email"),
            (
                "field",
                "Specific field to return. Available fields: 'email_id', 'inbox/outbox', "
                "'sender/recipient', 'subject', 'sent_datetime', 'body'",
            ),
        ],
        ["email_id", "field"],
    ),
    function_schema(
        "email_search_emails",
        "Searches for emails matching the given query across subject, body, or sender fields. "
        "The function matches an email if all words in the query appear in any of these fields.",
        [
            ("query", "Search query, matching terms in subject, body, or sender/recipient fields"),
            ("date_min", "Lower date limit for the email's sent date (inclusive). Format: YYYY-MM-DD"),
            ("date_max", "Upper date limit for the email's sent date (inclusive). Format: YYYY-MM-DD"),
            ("page", "Page number of results to return", "integer"),
            ("page_size", "Number of emails per page", "integer"),
        ],
        [],
    ),
    function_schema(
        "email_send_email",
        "Sends an email to the specified recipient.",
        [
            ("recipient", "Email address of the recipient"),
            ("subject", "Subject line of the email"),
            ("body", "Body content of the email"),
        ],
        ["recipient", "subject", "body"],
    ),
    function_schema(
        "email_delete_email",
        "Deletes an email by its ID.",
        [("email_id", "Unique ID of the email to be deleted")],
        ["email_id"],
    ),
    function_schema(
        "email_forward_email",
        "Forwards an email to the specified recipient.",
        [("email_id", "Unique ID of the email to be forwarded"), ("recipient", "Email address of the recipient")],
        ["email_id", "recipient"],
    ),
    function_schema(
        "email_reply_email",
        "Replies to an email by its ID.",
        [("email_id", "Unique ID of the email to be replied"), ("body", "Body content of the email")],
        ["email_id", "body"],
    ),
]
