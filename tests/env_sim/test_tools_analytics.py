"""Analytics tools, checked against counts computed straight from the CSV."""

import csv
from collections import defaultdict

import pytest

from env_sim.workplace_assistant import call_tool
from env_sim.workplace_assistant.database import DATA_DIR, Database


@pytest.fixture
def db():
    return Database.fresh()


@pytest.fixture(scope="module")
def rows():
    with open(DATA_DIR / "processed" / "analytics_data.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _per_day(rows, lo, hi, value):
    out = defaultdict(list)
    for r in rows:
        if lo <= r["date_of_visit"] <= hi:
            out[r["date_of_visit"]].append(value(r))
    return dict(sorted(out.items()))


def test_counts_per_day(db, rows):
    lo, hi = "2023-11-01", "2023-11-30"
    args = {"time_min": lo, "time_max": hi}
    assert call_tool(db, "analytics_total_visits_count", args) == {
        d: len(v) for d, v in _per_day(rows, lo, hi, lambda r: 1).items()
    }
    assert call_tool(db, "analytics_engaged_users_count", args) == {
        d: sum(v) for d, v in _per_day(rows, lo, hi, lambda r: r["user_engaged"] == "True").items()
    }
    assert call_tool(db, "analytics_traffic_source_count", {**args, "traffic_source": "search engine"}) == {
        d: sum(v) for d, v in _per_day(rows, lo, hi, lambda r: r["traffic_source"] == "search engine").items()
    }
    means = call_tool(db, "analytics_get_average_session_duration", args)
    assert means == {
        d: sum(v) / len(v) for d, v in _per_day(rows, lo, hi, lambda r: float(r["session_duration_seconds"])).items()
    }
    assert list(means) == sorted(means)
    everything = call_tool(db, "analytics_total_visits_count", {})
    assert sum(everything.values()) == 1000


def test_range_compares_strings_and_rejects_numbers(db):
    assert call_tool(db, "analytics_total_visits_count", {"time_min": "2024-01-01"}) == {}
    assert call_tool(db, "analytics_total_visits_count", {"time_min": 2023}) == (
        "Error executing tool 'analytics_total_visits_count': '>=' not supported between instances of 'str' and 'int'"
    )


def test_visitor_lookup_and_in_place_float_quirk(db):
    visits = call_tool(db, "analytics_get_visitor_information_by_id", {"visitor_id": "5126"})
    assert len(visits) == 3 and visits[0]["session_duration_seconds"] == "23" and visits[0]["user_engaged"] is True
    assert call_tool(db, "analytics_get_visitor_information_by_id", {"visitor_id": "0"}) == "Visitor not found."
    assert call_tool(db, "analytics_get_visitor_information_by_id", {}) == "Visitor ID not provided."
    # the reference's average without a range converts its own column to float
    call_tool(db, "analytics_get_average_session_duration", {})
    again = call_tool(db, "analytics_get_visitor_information_by_id", {"visitor_id": "5126"})
    assert again[0]["session_duration_seconds"] == 23.0
    assert Database.fresh().session_seconds_are_float is False


def test_create_plot(db):
    args = {"time_min": "2023-11-01", "time_max": "2023-11-30", "value_to_plot": "total_visits", "plot_type": "bar"}
    assert call_tool(db, "analytics_create_plot", args) == "plots/2023-11-01_2023-11-30_total_visits_bar.png"
    assert db.plots.rows == [("plots/2023-11-01_2023-11-30_total_visits_bar.png",)] and db.plots.labels == [0]
    assert call_tool(db, "analytics_create_plot", {**args, "time_min": None}) == "Start date not provided."
    assert call_tool(db, "analytics_create_plot", {**args, "time_max": ""}) == "End date not provided."
    assert call_tool(db, "analytics_create_plot", {**args, "value_to_plot": "visits"}).startswith(
        "Value to plot must be one of 'total_visits'"
    )
    assert call_tool(db, "analytics_create_plot", {**args, "plot_type": "pie"}) == (
        "Plot type must be one of 'bar', 'line', 'scatter', or 'histogram'"
    )
    assert len(db.plots) == 1
