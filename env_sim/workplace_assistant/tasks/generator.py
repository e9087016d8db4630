"""Seeded task generator: dataset rows from templates over the initial database.

Each template picks its parameters from the data, phrases a request (several phrasings per template), and computes
the ground truth by querying the snapshot for what the request asks - the latest email from a person, the overdue
tasks of an assignee, the customers matching a filter, the days where a metric crosses a threshold. Requests that
change state get ground truths that change state; conditional requests get an empty ground truth when their
condition is false; requests that only ask for information get an empty ground truth.

The templates follow the WorkBench / Workplace Assistant conventions (so generated rows look like the real dataset):
"since <date>" plots end yesterday (2023-11-29), durations are minutes as strings, names are first names resolved
through the company directory. A few easy templates copy every argument from the request, so that a small model
has something to learn first.

    rows = generate_rows(1255, seed=42)                    # all five domains, realistic mix
    rows = generate_rows(100, seed=1, categories=["workplace_assistant_email"])
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from env_sim.workplace_assistant.tasks.rows import CATEGORIES, CATEGORY_PREFIX, DOMAINS, make_row
from env_sim.workplace_assistant.tasks.snapshot import (
    METRICS,
    NOW,
    TODAY,
    TRAFFIC_SOURCES,
    YESTERDAY,
    Snapshot,
    days_before,
    first_name,
    initial_snapshot,
    natural_date,
)

Call = dict[str, Any]


@dataclass(frozen=True)
class Task:
    query: str
    ground_truth: list[Call]


@dataclass(frozen=True)
class Template:
    """One kind of request. `build` returns None when the drawn parameters do not make a sensible task."""

    name: str
    domain: str
    weight: float
    difficulty: str  # easy | medium | hard
    build: Callable[[random.Random, Snapshot], Task | None]


def call(name: str, **arguments: Any) -> Call:
    return {"name": name, "arguments": arguments}


def phrase(rng: random.Random, variants: Sequence[str], **values: Any) -> str:
    return rng.choice(variants).format(**values)


def _capital(name: str) -> str:
    return name[:1].upper() + name[1:]


def _clock(hour: int, minute: int) -> str:
    """15:30 -> "3:30pm", 10:00 -> "10am" (the way people write meeting times)."""
    suffix = "am" if hour < 12 else "pm"
    shown = hour % 12 or 12
    return f"{shown}:{minute:02d}{suffix}" if minute else f"{shown}{suffix}"


def _duration_words(minutes: int) -> str:
    return {30: "30-minute", 60: "1 hour", 90: "1.5 hour", 120: "2 hour"}[minutes]


def _weekday_dates() -> dict[str, str]:
    """Weekday name -> its date within the next seven days (tomorrow is Friday 2023-12-01)."""
    result = {}
    for offset in range(1, 8):
        date = TODAY + timedelta(days=offset)
        result[date.strftime("%A")] = date.isoformat()
    return result


# ======================================================================================== email
EMAIL_BODIES = [
    "Please send me the latest figures before the end of the week.",
    "Can we move our sync to next Tuesday?",
    "Thanks for your help with the launch - great work.",
    "I have reviewed the draft and left a few comments.",
    "Could you share the agenda for tomorrow's meeting?",
    "Reminder: the report is due on Friday.",
]
EMAIL_SUBJECTS = [
    "Quick question",
    "Weekly figures",
    "Meeting agenda",
    "Draft review",
    "Launch follow-up",
    "Report deadline",
]
REPLIES = [
    "Thanks for the update - I will get back to you tomorrow.",
    "Got it, thank you!",
    "Thanks, I will take a look today.",
    "Sounds good to me.",
]


def _sender_with_emails(rng: random.Random, snap: Snapshot) -> str:
    return rng.choice(sorted(sender for sender, emails in snap.emails_from.items() if emails))


def email_delete_last_from(rng, snap):
    sender = _sender_with_emails(rng, snap)
    latest = snap.latest_email_from(sender)
    query = phrase(
        rng,
        [
            "Delete my last email from {name}",
            "Can you delete the most recent email {name} sent me?",
            "Please remove the latest email from {name}",
        ],
        name=first_name(sender),
    )
    return Task(query, [call("email_delete_email", email_id=latest["email_id"])])


def email_send(rng, snap):
    person = rng.choice(snap.people)
    body, subject = rng.choice(EMAIL_BODIES), rng.choice(EMAIL_SUBJECTS)
    query = phrase(
        rng,
        [
            "Send an email to {name} saying '{body}' and title it '{subject}'",
            "I need to send an email to {name} saying '{body}' and title it '{subject}'. Can you do that?",
            "Email {name} with the subject '{subject}' and the message '{body}'",
        ],
        name=person,
        body=body,
        subject=subject,
    )
    return Task(query, [call("email_send_email", recipient=snap.email_of[person], subject=subject, body=body)])


def email_send_to_address(rng, snap):
    address = rng.choice(snap.directory)
    body, subject = rng.choice(EMAIL_BODIES), rng.choice(EMAIL_SUBJECTS)
    query = phrase(
        rng,
        [
            "Send an email to {address} with subject '{subject}' and body '{body}'",
            "Write to {address}: subject '{subject}', body '{body}'",
        ],
        address=address,
        body=body,
        subject=subject,
    )
    return Task(query, [call("email_send_email", recipient=address, subject=subject, body=body)])


def email_reply_last_about(rng, snap):
    sender = _sender_with_emails(rng, snap)
    subject = rng.choice(snap.emails_from[sender])["subject"]
    latest = snap.latest_email_from(sender, subject)
    reply = rng.choice(REPLIES)
    query = phrase(
        rng,
        [
            "Reply to {name}'s last email about '{subject}' with '{reply}'",
            "I need to get back to {name}'s last email about '{subject}' with '{reply}'. Can you send that?",
        ],
        name=first_name(sender),
        subject=subject,
        reply=reply,
    )
    return Task(query, [call("email_reply_email", email_id=latest["email_id"], body=reply)])


def email_reply_latest_from(rng, snap):
    sender = _sender_with_emails(rng, snap)
    reply = rng.choice(REPLIES)
    query = phrase(
        rng,
        [
            "Reply to the latest email from {name} with '{reply}'",
            "Can you answer {name}'s most recent email with '{reply}'?",
        ],
        name=first_name(sender),
        reply=reply,
    )
    return Task(query, [call("email_reply_email", email_id=snap.latest_email_from(sender)["email_id"], body=reply)])


def email_forward_latest_about(rng, snap):
    subject = rng.choice(sorted({email["subject"] for email in snap.emails}))
    latest = max((e for e in snap.emails if e["subject"] == subject), key=lambda e: e["sent_datetime"])
    recipient = rng.choice([p for p in snap.people if snap.email_of[p] != latest["sender/recipient"]])
    query = phrase(
        rng,
        [
            "Forward the latest email about '{subject}' to {name}",
            "Can you send {name} the most recent email about '{subject}'?",
        ],
        subject=subject,
        name=recipient,
    )
    return Task(query, [call("email_forward_email", email_id=latest["email_id"], recipient=snap.email_of[recipient])])


def email_forward_recent_from(rng, snap):
    sender = _sender_with_emails(rng, snap)
    recipient = rng.choice([p for p in snap.people if snap.email_of[p] != sender])
    query = phrase(
        rng,
        [
            "Forward my most recent email from {sender} to {recipient}",
            "can you forward my most recent email from {sender} to {recipient}",
        ],
        sender=first_name(sender),
        recipient=recipient,
    )
    return Task(
        query,
        [
            call(
                "email_forward_email",
                email_id=snap.latest_email_from(sender)["email_id"],
                recipient=snap.email_of[recipient],
            )
        ],
    )


def email_forward_to_two(rng, snap):
    subject = rng.choice(sorted({email["subject"] for email in snap.emails}))
    latest = max((e for e in snap.emails if e["subject"] == subject), key=lambda e: e["sent_datetime"])
    first, second = rng.sample([p for p in snap.people if snap.email_of[p] != latest["sender/recipient"]], 2)
    query = phrase(rng, ["Forward the last email about '{subject}' to {a} and {b}"], subject=subject, a=first, b=second)
    return Task(
        query,
        [
            call("email_forward_email", email_id=latest["email_id"], recipient=snap.email_of[first]),
            call("email_forward_email", email_id=latest["email_id"], recipient=snap.email_of[second]),
        ],
    )


def email_delete_recent_days(rng, snap):
    sender = _sender_with_emails(rng, snap)
    days = rng.choice([3, 5, 7, 10, 14])
    since = days_before(days)
    matches = [e for e in snap.emails_from[sender] if e["sent_datetime"][:10] >= since]
    query = phrase(
        rng,
        [
            "Delete all my emails from {name} from the last {days} days",
            "All my emails from {name} from the last {days} days need to be deleted. Can you do that?",
        ],
        name=first_name(sender),
        days=days,
    )
    return Task(query, [call("email_delete_email", email_id=e["email_id"]) for e in matches])


def email_delete_by_id(rng, snap):
    email = rng.choice(snap.emails)
    query = phrase(rng, ["Delete the email with ID {id}", "Please delete email {id}"], id=email["email_id"])
    return Task(query, [call("email_delete_email", email_id=email["email_id"])])


def email_forward_by_id(rng, snap):
    email = rng.choice(snap.emails)
    address = rng.choice(snap.directory)
    query = phrase(
        rng,
        ["Forward email {id} to {address}", "Please forward the email with ID {id} to {address}"],
        id=email["email_id"],
        address=address,
    )
    return Task(query, [call("email_forward_email", email_id=email["email_id"], recipient=address)])


def email_count_from(rng, snap):
    """Information only: the answer is text, the state must not change."""
    sender = _sender_with_emails(rng, snap)
    query = phrase(
        rng,
        ["How many emails have I received from {name}?", "What was the subject of {name}'s last email?"],
        name=first_name(sender),
    )
    return Task(query, [])


# ======================================================================================== calendar
def _meeting_day(rng, snap, future_only=True) -> str:
    days = sorted(d for d, events in snap.events_by_day.items() if events and (not future_only or d > NOW[:10]))
    return rng.choice(days)


def calendar_cancel_first_on(rng, snap):
    date = _meeting_day(rng, snap)
    first = snap.events_by_day[date][0]
    query = phrase(
        rng, ["Cancel my first meeting on {date}", "Delete my first meeting on {date}"], date=natural_date(date)
    )
    return Task(query, [call("calendar_delete_event", event_id=first["event_id"])])


def calendar_rename_last_on(rng, snap):
    date = _meeting_day(rng, snap)
    last = snap.events_by_day[date][-1]
    new_name = rng.choice(sorted({e["event_name"] for e in snap.events} - {last["event_name"]}))
    query = phrase(
        rng,
        [
            "Change the name of the last event on {date} to {name}",
            "Can you change the name of the last event on {date} to {name}",
        ],
        date=natural_date(date),
        name=new_name,
    )
    return Task(
        query, [call("calendar_update_event", event_id=last["event_id"], field="event_name", new_value=new_name)]
    )


def calendar_push_back_first_with(rng, snap):
    date = _meeting_day(rng, snap)
    event = snap.events_by_day[date][0]
    person = first_name(event["participant_email"])
    first_with = next(e for e in snap.events_by_day[date] if e["participant_email"] == event["participant_email"])
    shift = rng.choice([30, 60, 90])
    start = datetime.strptime(first_with["event_start"], "%Y-%m-%d %H:%M:%S") + timedelta(minutes=shift)
    end = start + timedelta(minutes=int(first_with["duration"]))
    if end.hour * 60 + end.minute > 18 * 60 or end.date() != start.date():
        return None
    shift_words = {30: "30 minutes", 60: "an hour", 90: "1.5 hours"}[shift]
    query = phrase(
        rng,
        [
            "Push back my first meeting with {name} on {date} by {shift}",
            "please move my first meeting with {name} on {date} by {shift}",
        ],
        name=person,
        date=natural_date(date),
        shift=shift_words,
    )
    return Task(
        query,
        [
            call(
                "calendar_update_event",
                event_id=first_with["event_id"],
                field="event_start",
                new_value=start.strftime("%Y-%m-%d %H:%M:%S"),
            )
        ],
    )


def calendar_cancel_next_named(rng, snap):
    name = rng.choice(sorted({e["event_name"] for e in snap.future_events}))
    nxt = next(e for e in snap.future_events if e["event_name"] == name)
    query = phrase(rng, ["Cancel the next {name} meeting", "Can you cancel the next {name} meeting"], name=name)
    return Task(query, [call("calendar_delete_event", event_id=nxt["event_id"])])


def calendar_rename_next_named(rng, snap):
    name = rng.choice(sorted({e["event_name"] for e in snap.future_events}))
    nxt = next(e for e in snap.future_events if e["event_name"] == name)
    new_name = rng.choice(sorted({e["event_name"] for e in snap.events} - {name}))
    query = phrase(
        rng,
        ["Rename the next {name} meeting to {new}", "can you rename the next {name} meeting to {new}"],
        name=name,
        new=new_name,
    )
    return Task(
        query, [call("calendar_update_event", event_id=nxt["event_id"], field="event_name", new_value=new_name)]
    )


def calendar_cancel_next_with(rng, snap):
    person = rng.choice(sorted({e["participant_email"] for e in snap.future_events}))
    nxt = next(e for e in snap.future_events if e["participant_email"] == person)
    query = phrase(
        rng,
        ["Cancel my next meeting with {name}", "Please cancel the next meeting I have with {name}"],
        name=first_name(person),
    )
    return Task(query, [call("calendar_delete_event", event_id=nxt["event_id"])])


def calendar_cancel_all_future_with(rng, snap):
    person = rng.choice(sorted({e["participant_email"] for e in snap.future_events}))
    events = [e for e in snap.future_events if e["participant_email"] == person]
    query = phrase(
        rng,
        ["Cancel all future meetings with {name}", "Delete every upcoming meeting I have with {name}"],
        name=first_name(person),
    )
    return Task(query, [call("calendar_delete_event", event_id=e["event_id"]) for e in events])


def calendar_cancel_future_named(rng, snap):
    name = rng.choice(sorted({e["event_name"] for e in snap.future_events}))
    events = [e for e in snap.future_events if e["event_name"] == name]
    query = phrase(rng, ["Cancel future {name} meetings", "Delete all the future {name} meetings"], name=name)
    return Task(query, [call("calendar_delete_event", event_id=e["event_id"]) for e in events])


def calendar_cancel_day_before_after(rng, snap):
    weekday, date = rng.choice(sorted(_weekday_dates().items()))
    events = snap.events_by_day.get(date, [])
    hour = rng.choice([10, 11, 12, 13, 14, 15])
    boundary = f"{date} {hour:02d}:00:00"
    if any(e["event_start"] == boundary for e in events):
        return None  # "after 11" with a meeting at exactly 11 is ambiguous
    before = rng.random() < 0.5
    chosen = [e for e in events if (e["event_start"] < boundary) == before]
    query = phrase(
        rng,
        ["Cancel my meetings on {weekday} {side} {time}"],
        weekday=weekday,
        side="before" if before else "after",
        time=_clock(hour, 0),
    )
    return Task(query, [call("calendar_delete_event", event_id=e["event_id"]) for e in chosen])


def calendar_create(rng, snap):
    person = rng.choice(snap.people)
    minutes = rng.choice([30, 60, 90, 120])
    date = (TODAY + timedelta(days=rng.randint(1, 21))).isoformat()
    hour = rng.randint(9, 17 - (minutes + 59) // 60)
    minute = rng.choice([0, 30])
    if hour * 60 + minute + minutes > 18 * 60:
        minute = 0
    name = rng.choice(sorted({e["event_name"] for e in snap.events}))
    query = phrase(
        rng,
        [
            "Create a {duration} event called {name} on {date} at {time} with {person}",
            "Schedule a {duration} meeting with {person} called {name} on {date} at {time}",
        ],
        duration=_duration_words(minutes),
        name=name,
        date=natural_date(date),
        time=_clock(hour, minute),
        person=person,
    )
    return Task(
        query,
        [
            call(
                "calendar_create_event",
                event_name=name,
                participant_email=snap.email_of[person],
                event_start=f"{date} {hour:02d}:{minute:02d}:00",
                duration=str(minutes),
            )
        ],
    )


def calendar_create_explicit(rng, snap):
    address = rng.choice(snap.directory)
    minutes = rng.choice([30, 60, 90])
    date = (TODAY + timedelta(days=rng.randint(1, 14))).isoformat()
    hour = rng.randint(9, 15)
    name = rng.choice(sorted({e["event_name"] for e in snap.events}))
    start = f"{date} {hour:02d}:00:00"
    query = phrase(
        rng,
        [
            "Create an event named '{name}' with {address} starting {start} lasting {minutes} minutes",
            "Add '{name}' to my calendar at {start} for {minutes} minutes with {address}",
        ],
        name=name,
        address=address,
        start=start,
        minutes=minutes,
    )
    return Task(
        query,
        [
            call(
                "calendar_create_event",
                event_name=name,
                participant_email=address,
                event_start=start,
                duration=str(minutes),
            )
        ],
    )


def calendar_delete_by_id(rng, snap):
    event = rng.choice(snap.events)
    query = phrase(rng, ["Delete the event with ID {id}", "Remove calendar event {id}"], id=event["event_id"])
    return Task(query, [call("calendar_delete_event", event_id=event["event_id"])])


def calendar_catch_up_if_not_met(rng, snap):
    person = rng.choice(snap.people)
    days = rng.choice([3, 7, 14, 30])
    since = days_before(days)
    met = any(
        e["participant_email"] == snap.email_of[person] and since <= e["event_start"][:10] <= NOW[:10]
        for e in snap.events
    )
    date = (TODAY + timedelta(days=rng.randint(1, 7))).isoformat()
    hour = rng.randint(9, 17)
    query = phrase(
        rng,
        [
            "If I haven't met with {name} in the last {days} days, schedule a 30-minute meeting called "
            "'catch-up' with them on {date} at {time}",
            "Check whether I've met with {name} in the last {days} days. If not, book a 30-minute "
            "'catch-up' with them on {date} at {time}",
        ],
        name=person,
        days=days,
        date=natural_date(date),
        time=_clock(hour, 0),
    )
    ground_truth = (
        []
        if met
        else [
            call(
                "calendar_create_event",
                event_name="catch-up",
                participant_email=snap.email_of[person],
                event_start=f"{date} {hour:02d}:00:00",
                duration="30",
            )
        ]
    )
    return Task(query, ground_truth)


def calendar_first_meeting_question(rng, snap):
    date = _meeting_day(rng, snap)
    query = phrase(
        rng,
        ["Who is my first meeting with on {date}?", "What time does my last meeting on {date} start?"],
        date=natural_date(date),
    )
    return Task(query, [])


# ======================================================================================== analytics
PLOT_TYPES = {"bar": "bar", "line": "line", "scatter": "scatter", "histogram": "histogram"}


def _since_date(rng) -> str:
    return days_before(rng.randint(2, 80))


def analytics_chart_since(rng, snap):
    metric_words, metric = rng.choice(sorted(METRICS.items()))
    plot_type = rng.choice(["bar", "line", "scatter", "histogram"])
    since = _since_date(rng)
    query = phrase(
        rng,
        [
            "Can you make a {plot} chart of {metric} since {date}?",
            "Make a {plot} chart of {metric} since {date}",
            "Plot {metric} since {date} as a {plot} chart",
        ],
        plot=plot_type,
        metric=metric_words,
        date=natural_date(since),
    )
    return Task(
        query,
        [call("analytics_create_plot", time_min=since, time_max=YESTERDAY, value_to_plot=metric, plot_type=plot_type)],
    )


def analytics_distribution_on(rng, snap):
    metric_words, metric = rng.choice(sorted(METRICS.items()))
    date = _since_date(rng)
    query = phrase(
        rng,
        [
            "Plot the distribution of {metric} on {date}",
            "please plot the distribution of the {metric} metric on {date}",
        ],
        metric=metric_words,
        date=natural_date(date),
    )
    return Task(
        query,
        [call("analytics_create_plot", time_min=date, time_max=date, value_to_plot=metric, plot_type="histogram")],
    )


def analytics_two_distributions(rng, snap):
    (words_a, metric_a), (words_b, metric_b) = rng.sample(sorted(METRICS.items()), 2)
    start = days_before(rng.randint(20, 80))
    end = days_before(rng.randint(1, 19))
    query = phrase(
        rng,
        [
            "Can you plot the distribution of both {a} and {b} between {start} and {end}?",
            "Please plot for me the distribution of {a} and {b} between {start} and {end}",
        ],
        a=words_a,
        b=words_b,
        start=natural_date(start),
        end=natural_date(end),
    )
    return Task(
        query,
        [
            call("analytics_create_plot", time_min=start, time_max=end, value_to_plot=m, plot_type="histogram")
            for m in (metric_a, metric_b)
        ],
    )


def analytics_two_bar_charts(rng, snap):
    (words_a, metric_a), (words_b, metric_b) = rng.sample(sorted(METRICS.items()), 2)
    since = _since_date(rng)
    query = phrase(rng, ["Make bar charts showing {a} and {b} since {since}"], a=words_a, b=words_b, since=since)
    return Task(
        query,
        [
            call("analytics_create_plot", time_min=since, time_max=YESTERDAY, value_to_plot=m, plot_type="bar")
            for m in (metric_a, metric_b)
        ],
    )


def analytics_threshold_line(rng, snap):
    metric_words, metric = rng.choice(sorted(METRICS.items()))
    since = days_before(rng.randint(3, 40))
    values = snap.daily_metric(metric, since, YESTERDAY)
    with_today = snap.daily_metric(metric, since, TODAY.isoformat())
    if not values:
        return None
    more = rng.random() < 0.5
    low, high = min(values.values()), max(values.values())
    threshold = rng.randint(int(low), int(high) + 1)
    if float(threshold) in values.values():
        return None  # "more than 5" when a day is exactly 5 reads two ways
    crossed = any((v > threshold) if more else (v < threshold) for v in values.values())
    if crossed != any((v > threshold) if more else (v < threshold) for v in with_today.values()):
        return None  # the answer would depend on whether "since" includes today
    query = phrase(
        rng,
        [
            "If {metric} was {side} than {threshold} at any time since {date}, make a line plot of it since then",
            "was {metric} {side} than {threshold} at any time since {date}? If so, please plot it as a line chart",
        ],
        metric=metric_words,
        side="more" if more else "less",
        threshold=threshold,
        date=natural_date(since),
    )
    ground_truth = (
        [call("analytics_create_plot", time_min=since, time_max=YESTERDAY, value_to_plot=metric, plot_type="line")]
        if crossed
        else []
    )
    return Task(query, ground_truth)


def analytics_popular_source(rng, snap):
    since = _since_date(rng)
    counts = snap.source_counts(since, YESTERDAY).most_common()
    if len(counts) < 2:
        return None
    most = rng.random() < 0.5
    ranked = counts if most else list(reversed(counts))
    if ranked[0][1] == ranked[1][1]:
        return None
    query = phrase(
        rng,
        ["Can you make a line plot of the {which} popular traffic source since {date}?"],
        which="most" if most else "least",
        date=natural_date(since),
    )
    return Task(
        query,
        [
            call(
                "analytics_create_plot",
                time_min=since,
                time_max=YESTERDAY,
                value_to_plot=TRAFFIC_SOURCES[ranked[0][0]],
                plot_type="line",
            )
        ],
    )


def analytics_compare_sources(rng, snap):
    (words_a, _), (words_b, _) = rng.sample(sorted(TRAFFIC_SOURCES.items()), 2)
    weeks = rng.randint(1, 8)
    since = days_before(weeks * 7)
    counts = snap.source_counts(since, YESTERDAY)
    if counts[words_a] == counts[words_b]:
        return None
    query = phrase(
        rng,
        [
            "If we got more traffic from {a} than {b} during the last {weeks} weeks, make bar charts of "
            "both over that period"
        ],
        a=words_a,
        b=words_b,
        weeks=weeks,
    )
    ground_truth = (
        [
            call(
                "analytics_create_plot",
                time_min=since,
                time_max=YESTERDAY,
                value_to_plot=TRAFFIC_SOURCES[w],
                plot_type="bar",
            )
            for w in (words_a, words_b)
        ]
        if counts[words_a] > counts[words_b]
        else []
    )
    return Task(query, ground_truth)


def analytics_plot_explicit(rng, snap):
    value = rng.choice(sorted(set(METRICS.values()) | set(TRAFFIC_SOURCES.values())))
    plot_type = rng.choice(sorted(PLOT_TYPES))
    start = days_before(rng.randint(10, 80))
    end = days_before(rng.randint(0, 9))
    query = phrase(
        rng,
        [
            "Create a {plot} plot of {value} from {start} to {end}",
            "Plot {value} between {start} and {end} as a {plot} chart",
        ],
        plot=plot_type,
        value=value,
        start=start,
        end=end,
    )
    return Task(
        query, [call("analytics_create_plot", time_min=start, time_max=end, value_to_plot=value, plot_type=plot_type)]
    )


def analytics_question(rng, snap):
    metric_words, _ = rng.choice(sorted(METRICS.items()))
    since = _since_date(rng)
    query = phrase(
        rng,
        ["What was the {metric} on {date}?", "How did {metric} change since {date}?"],
        metric=metric_words,
        date=natural_date(since),
    )
    return Task(query, [])


# ======================================================================================== project management
LISTS = {"backlog": "Backlog", "in progress": "In Progress", "in review": "In Review", "completed": "Completed"}
TASK_NAMES = [
    "Implement user profile management API",
    "Design onboarding checklist",
    "Fix date picker on mobile",
    "Write API rate limit tests",
    "Refresh dashboard icons",
    "Migrate billing service to new queue",
]


def _tasks_of(snap, email) -> list[dict]:
    return sorted((t for t in snap.tasks if t["assigned_to_email"] == email), key=lambda t: t["task_id"])


def _overdue(task) -> bool:
    return task["due_date"] < TODAY.isoformat() and task["list_name"] != "Completed"


def _move_tasks(rng, snap, from_list: str, to_list: str, phrasings: list[str], only=lambda task: True) -> Task:
    """Move one assignee's tasks in `from_list` (that also pass `only`) to `to_list`."""
    person = rng.choice(snap.task_assignees)
    tasks = [t for t in _tasks_of(snap, person) if t["list_name"] == from_list and only(t)]
    query = phrase(rng, phrasings, name=first_name(person))
    return Task(
        query,
        [
            call("project_management_update_task", task_id=t["task_id"], field="list_name", new_value=to_list)
            for t in tasks
        ],
    )


def pm_move_in_progress_to_review(rng, snap):
    return _move_tasks(
        rng,
        snap,
        "In Progress",
        "In Review",
        [
            "Move all of {name}'s tasks that are in progress to in review",
            "can you move all of {name}'s tasks that are in progress to in review?",
        ],
    )


def pm_create_backlog_task(rng, snap):
    person = rng.choice(snap.task_assignees)
    board = rng.choice(["Back end", "Front end", "Design"])
    due = (TODAY + timedelta(days=rng.randint(1, 30))).isoformat()
    name = rng.choice(TASK_NAMES)
    query = phrase(
        rng,
        [
            "Add a new task to the {board} backlog called {task} and assign it to {name}. It's due on {due}.",
            "Create a backlog task '{task}' on the {board} board for {name}, due {due}",
        ],
        board=board,
        task=name,
        name=first_name(person),
        due=natural_date(due),
    )
    return Task(
        query,
        [
            call(
                "project_management_create_task",
                task_name=name,
                assigned_to_email=person,
                list_name="Backlog",
                due_date=due,
                board=board,
            )
        ],
    )


def pm_overdue_backlog_to_progress(rng, snap):
    return _move_tasks(
        rng,
        snap,
        "Backlog",
        "In Progress",
        [
            "Move all of {name}'s overdue tasks in the backlog to in progress",
            "can you move all of {name}'s overdue tasks in the backlog to in progress?",
        ],
        only=_overdue,
    )


def pm_review_to_completed(rng, snap):
    return _move_tasks(
        rng,
        snap,
        "In Review",
        "Completed",
        [
            "Move any of {name}'s tasks that are in review to completed",
            "can you move any of {name}'s tasks that are in review to completed?",
        ],
    )


def pm_sick_reassign(rng, snap):
    sick, cover = rng.sample(snap.task_assignees, 2)
    tasks = [t for t in _tasks_of(snap, sick) if t["list_name"] == "In Progress"]
    query = phrase(
        rng,
        [
            "{a} is sick so reassign their in progress tasks to {b}.",
            "{a} is out sick - please give their in progress tasks to {b}",
        ],
        a=first_name(sick),
        b=first_name(cover),
    )
    return Task(
        query,
        [
            call("project_management_update_task", task_id=t["task_id"], field="assigned_to_email", new_value=cover)
            for t in tasks
        ],
    )


def pm_vacation_to_backlog(rng, snap):
    person = rng.choice(snap.task_assignees)
    tasks = [t for t in _tasks_of(snap, person) if t["list_name"] in ("In Progress", "In Review")]
    query = phrase(
        rng,
        [
            "{name} is on vacation now so move all their unfinished tasks to the backlog.",
            "can you move all of {name}'s unfinished tasks to the backlog?",
        ],
        name=first_name(person),
    )
    return Task(
        query,
        [
            call("project_management_update_task", task_id=t["task_id"], field="list_name", new_value="Backlog")
            for t in tasks
        ],
    )


def pm_give_overdue_not_started(rng, snap):
    owner, other = rng.sample(snap.task_assignees, 2)
    tasks = [t for t in _tasks_of(snap, owner) if t["list_name"] == "Backlog" and _overdue(t)]
    query = phrase(
        rng,
        [
            "Give all the overdue tasks that {a} hasn't started to {b}.",
            "can you give all of {a}'s overdue tasks that they haven't started to {b}?",
        ],
        a=first_name(owner),
        b=first_name(other),
    )
    return Task(
        query,
        [
            call("project_management_update_task", task_id=t["task_id"], field="assigned_to_email", new_value=other)
            for t in tasks
        ],
    )


def pm_most_urgent_reassign(rng, snap):
    owner, other = rng.sample(snap.task_assignees, 2)
    open_tasks = sorted(
        (t for t in _tasks_of(snap, owner) if t["list_name"] != "Completed"), key=lambda t: t["due_date"]
    )
    if not open_tasks or (len(open_tasks) > 1 and open_tasks[0]["due_date"] == open_tasks[1]["due_date"]):
        return None  # no task, or no single most urgent one
    query = phrase(
        rng,
        [
            "Take {a}'s most urgent task and reassign it to {b}.",
            "I need to take {a}'s most urgent task and reassign it to {b}. Can you do that?",
        ],
        a=first_name(owner),
        b=first_name(other),
    )
    return Task(
        query,
        [
            call(
                "project_management_update_task",
                task_id=open_tasks[0]["task_id"],
                field="assigned_to_email",
                new_value=other,
            )
        ],
    )


def pm_move_by_id(rng, snap):
    task = rng.choice(snap.tasks)
    words, target = rng.choice([item for item in sorted(LISTS.items()) if item[1] != task["list_name"]])
    query = phrase(
        rng, ["Move task {id} to {list}", "Please set the list of task {id} to {list}"], id=task["task_id"], list=target
    )
    return Task(
        query, [call("project_management_update_task", task_id=task["task_id"], field="list_name", new_value=target)]
    )


def pm_delete_by_id(rng, snap):
    task = rng.choice(snap.tasks)
    query = phrase(rng, ["Delete task {id}", "Remove the task with ID {id} from the board"], id=task["task_id"])
    return Task(query, [call("project_management_delete_task", task_id=task["task_id"])])


def pm_question(rng, snap):
    person = rng.choice(snap.task_assignees)
    query = phrase(
        rng,
        ["How many tasks does {name} have in review?", "Which of {name}'s tasks are overdue?"],
        name=first_name(person),
    )
    return Task(query, [])


# ======================================================================================== CRM
STATUS_WORDS = {"qualified": "Qualified", "won": "Won", "lost": "Lost", "lead": "Lead", "proposal": "Proposal"}
PRODUCT_WORDS = {
    "software": "Software",
    "hardware": "Hardware",
    "services": "Services",
    "consulting": "Consulting",
    "training": "Training",
}
NEW_CUSTOMERS = [
    "Morgan Wilson",
    "Dakota Thomas",
    "Reese Martinez",
    "Jordan Lee",
    "Avery Brooks",
    "Riley Chen",
    "Casey Nguyen",
    "Skyler Patel",
    "Drew Kim",
    "Harper Diaz",
]


def _unique_customer(rng, snap) -> dict:
    return rng.choice([c for c in snap.customers if snap.customer_name_counts[c["customer_name"]] == 1])


def crm_update_status(rng, snap):
    customer = _unique_customer(rng, snap)
    words, status = rng.choice([item for item in sorted(STATUS_WORDS.items()) if item[1] != customer["status"]])
    query = phrase(
        rng,
        ["Update the status of {name} to {status} in the crm", "{name} is now {status}. Can you update the crm?"],
        name=customer["customer_name"],
        status=words,
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=customer["customer_id"],
                field="status",
                new_value=status,
            )
        ],
    )


def crm_delete_customer(rng, snap):
    customer = _unique_customer(rng, snap)
    query = phrase(
        rng,
        ["Delete {name} from the crm", "{name} is no longer a customer. Can you delete them from the crm?"],
        name=customer["customer_name"],
    )
    return Task(query, [call("customer_relationship_manager_delete_customer", customer_id=customer["customer_id"])])


def crm_add_lead(rng, snap):
    existing = {c["customer_name"] for c in snap.customers}
    name = rng.choice([n for n in NEW_CUSTOMERS if n not in existing])
    owner = rng.choice(snap.crm_assignees)
    query = phrase(
        rng,
        [
            "Add {name} as a new lead in the crm and assign them to {owner}",
            "can you add {name} to the crm? They're a new lead and need to be assigned to {owner}",
        ],
        name=name,
        owner=_capital(first_name(owner)),
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_add_customer", customer_name=name, assigned_to_email=owner, status="Lead"
            )
        ],
    )


def crm_reassign_customer(rng, snap):
    customer = _unique_customer(rng, snap)
    owner = rng.choice([a for a in snap.crm_assignees if a != customer["assigned_to_email"]])
    query = phrase(
        rng,
        [
            "Reassign {name} to {owner} in the crm",
            "We're moving {name} to {owner}. Can you make that change in the crm?",
        ],
        name=customer["customer_name"],
        owner=_capital(first_name(owner)),
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=customer["customer_id"],
                field="assigned_to_email",
                new_value=owner,
            )
        ],
    )


def crm_reassign_leads_by_product(rng, snap):
    owner, new_owner = rng.sample(snap.crm_assignees, 2)
    words, product = rng.choice(sorted(PRODUCT_WORDS.items()))
    matches = snap.customers_where(owner=owner, status="Lead", product=product)
    query = phrase(
        rng,
        [
            "Reassign all of {a}'s leads that are interested in {product} to {b} in the crm.",
            "{b} is taking over all of {a}'s leads that are interested in {product}. Can you reassign them in the crm?",
        ],
        a=_capital(first_name(owner)),
        b=_capital(first_name(new_owner)),
        product=words,
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=c["customer_id"],
                field="assigned_to_email",
                new_value=new_owner,
            )
            for c in matches
        ],
    )


def crm_give_qualified_or_proposal(rng, snap):
    owner, new_owner = rng.sample(snap.crm_assignees, 2)
    words, product = rng.choice(sorted(PRODUCT_WORDS.items()))
    matches = [
        c
        for c in snap.customers
        if c["assigned_to_email"] == owner
        and c["product_interest"] == product
        and c["status"] in ("Qualified", "Proposal")
    ]
    query = phrase(
        rng,
        [
            "Give {b} all of {a}'s customers that are interested in {product} and are either qualified "
            "or in proposal in the crm"
        ],
        a=_capital(first_name(owner)),
        b=_capital(first_name(new_owner)),
        product=words,
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=c["customer_id"],
                field="assigned_to_email",
                new_value=new_owner,
            )
            for c in matches
        ],
    )


def crm_delete_by_status_product(rng, snap):
    owner = rng.choice(snap.crm_assignees)
    status_words, status = rng.choice(sorted(STATUS_WORDS.items()))
    words, product = rng.choice(sorted(PRODUCT_WORDS.items()))
    matches = snap.customers_where(owner=owner, status=status, product=product)
    query = phrase(
        rng,
        [
            "Delete all of {a}'s customers that are in the {status} stage and interested in {product} in the crm",
            "We no longer need to keep all of {a}'s customers that are in the {status} stage and "
            "interested in {product}. Can you delete them from the crm?",
        ],
        a=_capital(first_name(owner)),
        status=status_words,
        product=words,
    )
    return Task(
        query, [call("customer_relationship_manager_delete_customer", customer_id=c["customer_id"]) for c in matches]
    )


def crm_stale_proposals_to_lost(rng, snap):
    words, product = rng.choice(sorted(PRODUCT_WORDS.items()))
    weeks = rng.randint(1, 6)
    matches = snap.stale_proposals(product, weeks)
    query = phrase(
        rng,
        [
            "Move all customers that haven't responded to a proposal for the {product} product in "
            "{weeks} weeks to lost in the crm",
            "We need to move all customers that haven't responded to a proposal for the {product} "
            "product in {weeks} weeks to lost. Can you update the CRM?",
        ],
        product=words,
        weeks=weeks,
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=c["customer_id"],
                field="status",
                new_value="Lost",
            )
            for c in matches
        ],
    )


def crm_update_by_id(rng, snap):
    customer = rng.choice(snap.customers)
    words, status = rng.choice([item for item in sorted(STATUS_WORDS.items()) if item[1] != customer["status"]])
    query = phrase(
        rng,
        ["Set the status of customer {id} to {status}", "Change customer {id}'s status to {status}"],
        id=customer["customer_id"],
        status=status,
    )
    return Task(
        query,
        [
            call(
                "customer_relationship_manager_update_customer",
                customer_id=customer["customer_id"],
                field="status",
                new_value=status,
            )
        ],
    )


def crm_delete_by_id(rng, snap):
    customer = rng.choice(snap.customers)
    query = phrase(
        rng, ["Delete customer {id} from the crm", "Remove the customer with ID {id}"], id=customer["customer_id"]
    )
    return Task(query, [call("customer_relationship_manager_delete_customer", customer_id=customer["customer_id"])])


def crm_question(rng, snap):
    customer = _unique_customer(rng, snap)
    query = phrase(
        rng,
        ["Who is {name} assigned to in the crm?", "What product is {name} interested in?"],
        name=customer["customer_name"],
    )
    return Task(query, [])


# ======================================================================================== multi-domain
def multi_email_first_event_attendee(rng, snap):
    date = _meeting_day(rng, snap)
    event = snap.events_by_day[date][0]
    body = "Remember to attend this event."
    query = phrase(
        rng,
        [
            "Can you send an email to attendees of the first event on {date}? Title it with the event "
            "name and tell them '{body}'"
        ],
        date=natural_date(date),
        body=body,
    )
    return Task(
        query, [call("email_send_email", recipient=event["participant_email"], subject=event["event_name"], body=body)]
    )


def multi_email_if_overdue(rng, snap):
    person = rng.choice(snap.task_assignees)
    overdue = any(_overdue(t) for t in _tasks_of(snap, person))
    body = "You have a few overdue tasks - can you update me on them?"
    query = phrase(
        rng,
        [
            "I think {name} might have some overdue tasks. Can you check and if so, send them an email "
            "titled 'Overdue tasks' saying '{body}'"
        ],
        name=first_name(person),
        body=body,
    )
    return Task(
        query, [call("email_send_email", recipient=person, subject="Overdue tasks", body=body)] if overdue else []
    )


def multi_calendar_meet_customer_owner(rng, snap):
    customer = _unique_customer(rng, snap)
    date = (TODAY + timedelta(days=rng.randint(1, 7))).isoformat()
    hour = rng.randint(9, 17)
    name = f"Update on {customer['customer_name']}"
    query = phrase(
        rng,
        ["Book a 30-minute meeting called '{event}' with whoever is assigned to {customer} on {date} at {time}"],
        event=name,
        customer=customer["customer_name"],
        date=natural_date(date),
        time=_clock(hour, 0),
    )
    return Task(
        query,
        [
            call(
                "calendar_create_event",
                event_name=name,
                participant_email=customer["assigned_to_email"],
                event_start=f"{date} {hour:02d}:00:00",
                duration="30",
            )
        ],
    )


def _t(name, domain, weight, difficulty, build) -> Template:
    return Template(name, domain, weight, difficulty, build)


TEMPLATES: tuple[Template, ...] = (
    _t("email_delete_last_from", "email", 1.0, "medium", email_delete_last_from),
    _t("email_send", "email", 1.0, "easy", email_send),
    _t("email_send_to_address", "email", 1.0, "easy", email_send_to_address),
    _t("email_reply_last_about", "email", 1.0, "medium", email_reply_last_about),
    _t("email_reply_latest_from", "email", 1.0, "medium", email_reply_latest_from),
    _t("email_forward_latest_about", "email", 1.0, "medium", email_forward_latest_about),
    _t("email_forward_recent_from", "email", 1.0, "medium", email_forward_recent_from),
    _t("email_forward_to_two", "email", 0.7, "hard", email_forward_to_two),
    _t("email_delete_recent_days", "email", 0.7, "hard", email_delete_recent_days),
    _t("email_delete_by_id", "email", 1.0, "easy", email_delete_by_id),
    _t("email_forward_by_id", "email", 1.0, "easy", email_forward_by_id),
    _t("email_question", "email", 0.3, "easy", email_count_from),
    _t("multi_email_first_event_attendee", "email", 0.5, "hard", multi_email_first_event_attendee),
    _t("multi_email_if_overdue", "email", 0.5, "hard", multi_email_if_overdue),
    _t("calendar_cancel_first_on", "calendar", 1.0, "medium", calendar_cancel_first_on),
    _t("calendar_rename_last_on", "calendar", 1.0, "medium", calendar_rename_last_on),
    _t("calendar_push_back_first_with", "calendar", 0.7, "hard", calendar_push_back_first_with),
    _t("calendar_cancel_next_named", "calendar", 1.0, "medium", calendar_cancel_next_named),
    _t("calendar_rename_next_named", "calendar", 0.8, "medium", calendar_rename_next_named),
    _t("calendar_cancel_next_with", "calendar", 1.0, "medium", calendar_cancel_next_with),
    _t("calendar_cancel_all_future_with", "calendar", 0.7, "hard", calendar_cancel_all_future_with),
    _t("calendar_cancel_future_named", "calendar", 0.7, "hard", calendar_cancel_future_named),
    _t("calendar_cancel_day_before_after", "calendar", 0.6, "hard", calendar_cancel_day_before_after),
    _t("calendar_create", "calendar", 1.0, "medium", calendar_create),
    _t("calendar_create_explicit", "calendar", 1.0, "easy", calendar_create_explicit),
    _t("calendar_delete_by_id", "calendar", 1.0, "easy", calendar_delete_by_id),
    _t("calendar_catch_up_if_not_met", "calendar", 0.6, "hard", calendar_catch_up_if_not_met),
    _t("calendar_question", "calendar", 0.3, "easy", calendar_first_meeting_question),
    _t("multi_calendar_meet_customer_owner", "calendar", 0.5, "hard", multi_calendar_meet_customer_owner),
    _t("analytics_chart_since", "analytics", 1.2, "medium", analytics_chart_since),
    _t("analytics_distribution_on", "analytics", 1.0, "medium", analytics_distribution_on),
    _t("analytics_two_distributions", "analytics", 0.8, "medium", analytics_two_distributions),
    _t("analytics_two_bar_charts", "analytics", 0.8, "medium", analytics_two_bar_charts),
    _t("analytics_threshold_line", "analytics", 1.0, "hard", analytics_threshold_line),
    _t("analytics_popular_source", "analytics", 0.7, "hard", analytics_popular_source),
    _t("analytics_compare_sources", "analytics", 0.7, "hard", analytics_compare_sources),
    _t("analytics_plot_explicit", "analytics", 1.2, "easy", analytics_plot_explicit),
    _t("analytics_question", "analytics", 0.3, "easy", analytics_question),
    _t("pm_move_in_progress_to_review", "project_management", 0.8, "hard", pm_move_in_progress_to_review),
    _t("pm_create_backlog_task", "project_management", 1.0, "medium", pm_create_backlog_task),
    _t("pm_overdue_backlog_to_progress", "project_management", 0.8, "hard", pm_overdue_backlog_to_progress),
    _t("pm_review_to_completed", "project_management", 0.8, "hard", pm_review_to_completed),
    _t("pm_sick_reassign", "project_management", 0.8, "hard", pm_sick_reassign),
    _t("pm_vacation_to_backlog", "project_management", 0.7, "hard", pm_vacation_to_backlog),
    _t("pm_give_overdue_not_started", "project_management", 0.7, "hard", pm_give_overdue_not_started),
    _t("pm_most_urgent_reassign", "project_management", 0.8, "medium", pm_most_urgent_reassign),
    _t("pm_move_by_id", "project_management", 1.0, "easy", pm_move_by_id),
    _t("pm_delete_by_id", "project_management", 1.0, "easy", pm_delete_by_id),
    _t("pm_question", "project_management", 0.3, "easy", pm_question),
    _t("crm_update_status", "customer_relationship_manager", 1.0, "medium", crm_update_status),
    _t("crm_delete_customer", "customer_relationship_manager", 1.0, "medium", crm_delete_customer),
    _t("crm_add_lead", "customer_relationship_manager", 1.0, "medium", crm_add_lead),
    _t("crm_reassign_customer", "customer_relationship_manager", 1.0, "medium", crm_reassign_customer),
    _t("crm_reassign_leads_by_product", "customer_relationship_manager", 0.8, "hard", crm_reassign_leads_by_product),
    _t("crm_give_qualified_or_proposal", "customer_relationship_manager", 0.7, "hard", crm_give_qualified_or_proposal),
    _t("crm_delete_by_status_product", "customer_relationship_manager", 0.8, "hard", crm_delete_by_status_product),
    _t("crm_stale_proposals_to_lost", "customer_relationship_manager", 0.8, "hard", crm_stale_proposals_to_lost),
    _t("crm_update_by_id", "customer_relationship_manager", 1.0, "easy", crm_update_by_id),
    _t("crm_delete_by_id", "customer_relationship_manager", 1.0, "easy", crm_delete_by_id),
    _t("crm_question", "customer_relationship_manager", 0.3, "easy", crm_question),
)
TEMPLATES_BY_NAME = {template.name: template for template in TEMPLATES}

# Share of each domain in a generated set (WorkBench's single-domain mix, multi-domain tasks spread over the domain
# they act on).
DOMAIN_SHARES = {
    "email": 0.21,
    "calendar": 0.22,
    "analytics": 0.20,
    "project_management": 0.17,
    "customer_relationship_manager": 0.20,
}
MAX_TRIES_PER_ROW = 200


def _domains_from(categories: Iterable[str] | None) -> list[str]:
    if categories is None:
        return list(DOMAINS)
    domains = []
    for category in categories:
        domain = category[len(CATEGORY_PREFIX) :] if category.startswith(CATEGORY_PREFIX) else category
        if domain not in DOMAINS:
            raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        domains.append(domain)
    return domains


def generate_tasks(
    n: int,
    seed: int,
    categories: Iterable[str] | None = None,
    snapshot: Snapshot | None = None,
    templates: Sequence[Template] = TEMPLATES,
) -> list[tuple[Template, Task]]:
    """n distinct (template, task) pairs, deterministic for a seed."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    snap = snapshot or initial_snapshot()
    domains = _domains_from(categories)
    pool = [t for t in templates if t.domain in domains]
    if not pool:
        raise ValueError(f"no template covers categories {categories}")
    # Template weights scaled so each domain gets its share of the mix.
    domain_weight = {d: sum(t.weight for t in pool if t.domain == d) for d in domains}
    weights = [DOMAIN_SHARES[t.domain] * t.weight / domain_weight[t.domain] for t in pool]
    rng = random.Random(seed)
    seen: set[str] = set()
    results: list[tuple[Template, Task]] = []
    while len(results) < n:
        for _ in range(MAX_TRIES_PER_ROW):
            template = rng.choices(pool, weights)[0]
            task = template.build(rng, snap)
            if task is not None and task.query not in seen:
                break
        else:
            raise RuntimeError(
                f"could not draw a new distinct task after {MAX_TRIES_PER_ROW} tries "
                f"({len(results)} of {n} made); ask for fewer rows or more categories"
            )
        seen.add(task.query)
        results.append((template, task))
    return results


DIFFICULTIES = ("easy", "medium", "hard")


def templates_of(difficulties: Iterable[str] | None) -> tuple[Template, ...]:
    """The templates of the given difficulty levels (all when None)."""
    if difficulties is None:
        return TEMPLATES
    wanted = set(difficulties)
    unknown = wanted - set(DIFFICULTIES)
    if unknown:
        raise ValueError(f"unknown difficulty {sorted(unknown)}; expected some of {DIFFICULTIES}")
    return tuple(t for t in TEMPLATES if t.difficulty in wanted)


def generate_rows(
    n: int,
    seed: int,
    categories: Iterable[str] | None = None,
    start_id: int = 0,
    snapshot: Snapshot | None = None,
    difficulties: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """n dataset rows (ids start_id..start_id+n-1) drawn from the templates with a seeded RNG; `difficulties`
    (e.g. ["easy", "medium"]) keeps only templates of those levels."""
    tasks = generate_tasks(n, seed, categories, snapshot, templates_of(difficulties))
    return [
        make_row(start_id + index, task.query, task.ground_truth, template.domain)
        for index, (template, task) in enumerate(tasks)
    ]
