"""Analytics toolkit: website visit statistics per day, and plots (the only analytics state compared)."""

from __future__ import annotations

from env_sim.workplace_assistant.tools.pandas_semantics import GE, LE, series_compare, series_eq
from env_sim.workplace_assistant.tools.schema import function_schema

PLOTTABLE_VALUES = [
    "total_visits",
    "session_duration_seconds",
    "user_engaged",
    "visits_direct",
    "visits_referral",
    "visits_search_engine",
    "visits_social_media",
]
PLOT_TYPES = ["bar", "line", "scatter", "histogram"]


class AnalyticsTool:
    """The reference's AnalyticsTool over our tables (class and parameter names kept for error texts)."""

    def __init__(self, db):
        self._db = db

    def _rows_in_range(self, time_min, time_max) -> list:
        """Rows with time_min <= date_of_visit <= time_max (plain string comparison, as the reference)."""
        t = self._db.analytics_data
        rows = t.rows
        di = t.index_of["date_of_visit"]
        if time_min:
            mask = series_compare([r[di] for r in rows], time_min, GE)
            rows = [r for r, k in zip(rows, mask) if k]
        if time_max:
            mask = series_compare([r[di] for r in rows], time_max, LE)
            rows = [r for r, k in zip(rows, mask) if k]
        return rows

    def _per_day(self, rows, value_of) -> dict:
        """groupby('date_of_visit') with sorted keys; value_of(list_of_rows) -> the day's figure."""
        di = self._db.analytics_data.index_of["date_of_visit"]
        groups: dict = {}
        for r in rows:
            groups.setdefault(r[di], []).append(r)
        return {day: value_of(groups[day]) for day in sorted(groups)}

    def get_visitor_information_by_id(self, visitor_id=None):
        if not visitor_id:
            return "Visitor ID not provided."
        t = self._db.analytics_data
        hits = [pos for pos, hit in enumerate(series_eq(t.column("visitor_id"), visitor_id)) if hit]
        visitor_data = t.records(hits)
        if self._db.session_seconds_are_float:
            for rec in visitor_data:
                rec["session_duration_seconds"] = float(rec["session_duration_seconds"])
        return visitor_data if visitor_data else "Visitor not found."

    def create_plot(self, time_min=None, time_max=None, value_to_plot=None, plot_type=None):
        if not time_min:
            return "Start date not provided."
        if not time_max:
            return "End date not provided."
        if value_to_plot not in PLOTTABLE_VALUES:
            return (
                "Value to plot must be one of 'total_visits', 'session_duration_seconds', 'user_engaged', "
                "'visits_direct', 'visits_referral', 'visits_search_engine', 'visits_social_media'"
            )
        if plot_type not in PLOT_TYPES:
            return "Plot type must be one of 'bar', 'line', 'scatter', or 'histogram'"
        file_path = f"plots/{time_min}_{time_max}_{value_to_plot}_{plot_type}.png"
        plots = self._db.plots
        plots.append({"file_path": file_path}, renumber=False, label=len(plots))
        return file_path

    def total_visits_count(self, time_min=None, time_max=None):
        return self._per_day(self._rows_in_range(time_min, time_max), len)

    def engaged_users_count(self, time_min=None, time_max=None):
        ei = self._db.analytics_data.index_of["user_engaged"]
        return self._per_day(self._rows_in_range(time_min, time_max), lambda rs: sum(int(bool(r[ei])) for r in rs))

    def traffic_source_count(self, time_min=None, time_max=None, traffic_source=None):
        rows = self._rows_in_range(time_min, time_max)
        if traffic_source:
            si = self._db.analytics_data.index_of["traffic_source"]
            hits = series_eq([r[si] for r in rows], traffic_source)
            flagged = {id(r): int(h) for r, h in zip(rows, hits)}
            return self._per_day(rows, lambda rs: sum(flagged[id(r)] for r in rs))
        return self._per_day(rows, len)

    def get_average_session_duration(self, time_min=None, time_max=None):
        rows = self._rows_in_range(time_min, time_max)
        si = self._db.analytics_data.index_of["session_duration_seconds"]
        seconds = {id(r): float(r[si]) for r in rows}  # astype(float): a bad cell raises as in pandas
        if not time_min and not time_max:
            # the reference converts its own table here (no copy was taken): remembered for later look-ups
            self._db.session_seconds_are_float = True
        return self._per_day(rows, lambda rs: sum(seconds[id(r)] for r in rs) / len(rs))


_DATE_MIN = "Start date of the time range. Date format is YYYY-MM-DD"
_DATE_MAX = "End date of the time range. Date format is YYYY-MM-DD"

SCHEMAS = [
    function_schema(
        "analytics_get_visitor_information_by_id",
        "Returns the analytics data for a given visitor ID.",
        [("visitor_id", "ID of the visitor")],
        ["visitor_id"],
    ),
    function_schema(
        "analytics_create_plot",
        "Plots the analytics data for a given time range and value.",
        [
            ("time_min", _DATE_MIN),
            ("time_max", _DATE_MAX),
            (
                "value_to_plot",
                "Value to plot. Available values are: 'total_visits', 'session_duration_seconds', "
                "'user_engaged', 'visits_direct', 'visits_referral', 'visits_search_engine', "
                "'visits_social_media'",
            ),
            ("plot_type", "Type of plot. Can be 'bar', 'line', 'scatter' or 'histogram'"),
        ],
        ["time_min", "time_max", "value_to_plot", "plot_type"],
    ),
    function_schema(
        "analytics_total_visits_count",
        "Returns the total number of visits within a specified time range.",
        [("time_min", _DATE_MIN), ("time_max", _DATE_MAX)],
        [],
    ),
    function_schema(
        "analytics_engaged_users_count",
        "Returns the number of engaged users within a specified time range.",
        [("time_min", _DATE_MIN), ("time_max", _DATE_MAX)],
        [],
    ),
    function_schema(
        "analytics_traffic_source_count",
        "Returns the number of visits from a specific traffic source within a specified time range.",
        [
            ("time_min", _DATE_MIN),
            ("time_max", _DATE_MAX),
            (
                "traffic_source",
                "Traffic source to filter the visits. Available values are: 'direct', 'referral', "
                "'search engine', 'social media'",
            ),
        ],
        [],
    ),
    function_schema(
        "analytics_get_average_session_duration",
        "Returns the average session duration within a specified time range.",
        [("time_min", _DATE_MIN), ("time_max", _DATE_MAX)],
        [],
    ),
]
