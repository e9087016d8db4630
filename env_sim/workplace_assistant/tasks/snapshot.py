"""A read-only view of the initial database for the task generator: rows as dicts plus the lookups templates need.

Ground truths are computed by querying this view for what a query asks; nothing here changes state. Dates follow
the dataset's fixed clock: today is Thursday 2023-11-30, the current time 23:59:00.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

TODAY = date(2023, 11, 30)
NOW = "2023-11-30 23:59:00"
YESTERDAY = "2023-11-29"

# Natural-language metric name -> analytics value_to_plot, and how one day's value is computed from visit rows.
METRICS = {
    "total visits": "total_visits",
    "average session duration": "session_duration_seconds",
    "engaged users": "user_engaged",
}
TRAFFIC_SOURCES = {
    "direct": "visits_direct",
    "referral": "visits_referral",
    "search engine": "visits_search_engine",
    "social media": "visits_social_media",
}


def day(text: str) -> date:
    return datetime.strptime(text[:10], "%Y-%m-%d").date()


def _is_true(value: Any) -> bool:
    """user_engaged is a bool in the database ("True"/"False" text in the CSV)."""
    return value is True or str(value).lower() == "true"


def natural_date(value: date | str) -> str:
    """2023-11-05 -> "November 5"."""
    value = day(value) if isinstance(value, str) else value
    return f"{value.strftime('%B')} {value.day}"


def first_name(email: str) -> str:
    return email.split("@")[0].split(".")[0]


class Snapshot:
    """The initial state, indexed for template queries."""

    def __init__(
        self,
        emails: list[dict],
        events: list[dict],
        visits: list[dict],
        tasks: list[dict],
        customers: list[dict],
        directory: list[str],
    ) -> None:
        self.emails = emails
        self.events = events
        self.visits = visits
        self.tasks = tasks
        self.customers = customers
        self.directory = list(directory)
        self.email_of = {first_name(address): address for address in self.directory}
        self.people = sorted(self.email_of)
        self.task_assignees = sorted({task["assigned_to_email"] for task in tasks})
        self.crm_assignees = sorted({customer["assigned_to_email"] for customer in customers})
        self.emails_from: dict[str, list[dict]] = defaultdict(list)
        for email in sorted(emails, key=lambda row: row["sent_datetime"], reverse=True):
            self.emails_from[email["sender/recipient"]].append(email)
        self.events_by_day: dict[str, list[dict]] = defaultdict(list)
        for event in sorted(events, key=lambda row: row["event_start"]):
            self.events_by_day[event["event_start"][:10]].append(event)
        self.future_events = sorted((e for e in events if e["event_start"] > NOW), key=lambda e: e["event_start"])
        self.customer_name_counts = Counter(customer["customer_name"] for customer in customers)

    @classmethod
    def from_database(cls, db: Any) -> Snapshot:
        """The view of a `Database` (env_sim.workplace_assistant.database; read through its tables, never written)."""
        return cls(
            emails=db.emails.records(),
            events=db.calendar_events.records(),
            visits=db.analytics_data.records(),
            tasks=db.project_tasks.records(),
            customers=db.crm.records(),
            directory=list(db.directory),
        )

    # --- queries the templates ask (kept here so tests can check them against the real dataset's answers) ----
    def latest_email_from(self, sender: str, subject: str | None = None) -> dict | None:
        """The most recent email from `sender` (optionally with exactly this subject)."""
        return next((e for e in self.emails_from.get(sender, []) if subject is None or e["subject"] == subject), None)

    def customers_where(
        self, owner: str | None = None, status: str | None = None, product: str | None = None
    ) -> list[dict]:
        """Customers matching every given filter, in table order."""
        return [
            c
            for c in self.customers
            if (owner is None or c["assigned_to_email"] == owner)
            and (status is None or c["status"] == status)
            and (product is None or c["product_interest"] == product)
        ]

    def stale_proposals(self, product: str, weeks: int) -> list[dict]:
        """Customers in proposal for `product` not contacted for `weeks` weeks (last contact before the cutoff)."""
        cutoff = days_before(weeks * 7)
        return [
            c for c in self.customers_where(status="Proposal", product=product) if c["last_contact_date"][:10] < cutoff
        ]

    # --- analytics ---------------------------------------------------------------------------------------------
    def daily_metric(self, metric: str, start: str, end: str) -> dict[str, float]:
        """{date: value} over the days with visits in [start, end]; metric is a METRICS / TRAFFIC_SOURCES value."""
        per_day: dict[str, list[dict]] = defaultdict(list)
        for visit in self.visits:
            if start <= visit["date_of_visit"] <= end:
                per_day[visit["date_of_visit"]].append(visit)
        values = {}
        for date_text, rows in sorted(per_day.items()):
            if metric == "total_visits":
                values[date_text] = float(len(rows))
            elif metric == "user_engaged":
                values[date_text] = float(sum(_is_true(row["user_engaged"]) for row in rows))
            elif metric == "session_duration_seconds":
                values[date_text] = sum(float(row["session_duration_seconds"]) for row in rows) / len(rows)
            elif metric.startswith("visits_"):
                source = {v: k for k, v in TRAFFIC_SOURCES.items()}[metric]
                values[date_text] = float(sum(row["traffic_source"] == source for row in rows))
            else:
                raise ValueError(f"unknown metric {metric!r}")
        return values

    def source_counts(self, start: str, end: str) -> Counter:
        return Counter(v["traffic_source"] for v in self.visits if start <= v["date_of_visit"] <= end)


@lru_cache(maxsize=1)
def initial_snapshot() -> Snapshot:
    """The snapshot of the environment's initial database (built once per process)."""
    from env_sim.workplace_assistant.database import Database

    return Snapshot.from_database(Database.fresh())


def days_before(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()
