"""The Workplace Assistant databases: parsed once per process, copied cheaply for every episode.

The reference re-reads six CSV files with pandas for every session and every verification.
Here the CSVs are parsed once into immutable row tuples (the *snapshot*); ``Database.fresh()``
hands out tables that share those rows and copy their row list only when first written
(copy-on-write), so a reset costs a few object allocations.

Each table also keeps the pandas index labels of its rows, because the reference compares
DataFrames with ``DataFrame.equals``, which looks at the index too (a deleted row keeps the
labels of the others; ``concat(..., ignore_index=True)`` renumbers; the calendar's plain
``concat`` gives a new event the label 0).
"""

from __future__ import annotations

import csv
import threading
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

# The reference's fixed "now" (send_email's sent_datetime): str(pd.Timestamp("2023-11-30T23:59:00")).
CURRENT_TIME = "2023-11-30 23:59:00"

# Cells pandas.read_csv turns into NaN by default (its STR_NA_VALUES).
_NA_STRINGS = frozenset(
    [
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    ]
)

# The five tables the verifier compares, by the reference's container names.
COMPARED_TABLES = ("calendar", "email", "analytics", "project_management", "customer_relationship_manager")

# Columns whose case matters when comparing (every other column is lower-cased first).
CASE_SENSITIVE_COLUMNS = frozenset(["status", "list_name", "board"])


class Table:
    """Rows (tuples) of one DataFrame plus its index labels; copy-on-write over the snapshot."""

    __slots__ = ("columns", "index_of", "rows", "labels", "_owned")

    def __init__(self, columns: tuple, rows: list, labels: list, owned: bool = False):
        self.columns = columns
        self.index_of = {c: i for i, c in enumerate(columns)}
        self.rows = rows
        self.labels = labels
        self._owned = owned

    def share(self) -> Table:
        """A new table over the same rows; the first write copies them."""
        t = Table.__new__(Table)
        t.columns, t.index_of, t.rows, t.labels, t._owned = self.columns, self.index_of, self.rows, self.labels, False
        return t

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        i = self.index_of[name]
        return [r[i] for r in self.rows]

    def record(self, pos: int) -> dict:
        return dict(zip(self.columns, self.rows[pos]))

    def records(self, positions=None) -> list[dict]:
        cols = self.columns
        rows = self.rows if positions is None else [self.rows[p] for p in positions]
        return [dict(zip(cols, r)) for r in rows]

    def _own(self) -> None:
        if not self._owned:
            self.rows = list(self.rows)
            self.labels = list(self.labels)
            self._owned = True

    def append(self, values: dict, renumber: bool, label: int | None = None) -> None:
        """Add one row (missing columns -> None). ``renumber`` = concat(ignore_index=True)."""
        self._own()
        self.rows.append(tuple(values.get(c) for c in self.columns))
        if renumber:
            self.labels = list(range(len(self.rows)))
        else:
            self.labels.append(label)

    def keep(self, mask: list) -> None:
        """Boolean-mask filter (``df[mask]``): surviving rows keep their labels."""
        self.rows = [r for r, k in zip(self.rows, mask) if k]
        self.labels = [lab for lab, k in zip(self.labels, mask) if k]
        self._owned = True

    def set_where(self, mask: list, column: str, value) -> None:
        """``df.loc[mask, column] = value`` (lists are spread over the rows, dicts become NaN)."""
        from env_sim.workplace_assistant.tools.pandas_semantics import loc_values  # local: tools import this module

        positions = [pos for pos, hit in enumerate(mask) if hit]
        values = loc_values(value, len(positions))
        self._own()
        i = self.index_of[column]
        rows = self.rows
        for pos, v in zip(positions, values):
            row = list(rows[pos])
            row[i] = v
            rows[pos] = tuple(row)


class Database:
    """One episode's mutable state: every toolkit's tables."""

    __slots__ = (
        "emails",
        "calendar_events",
        "analytics_data",
        "plots",
        "project_tasks",
        "crm",
        "directory",
        "session_seconds_are_float",
    )
    # The slots' types (a slot has no value at class level; these annotations only declare them).
    emails: Table
    calendar_events: Table
    analytics_data: Table
    plots: Table
    project_tasks: Table
    crm: Table
    directory: tuple[str, ...]
    session_seconds_are_float: bool

    @classmethod
    def fresh(cls) -> Database:
        """A new, independent state equal to the initial snapshot (cheap: nothing is re-read)."""
        snap = _snapshot()
        db = cls.__new__(cls)
        db.emails = snap.emails.share()
        db.calendar_events = snap.calendar_events.share()
        db.analytics_data = snap.analytics_data.share()
        db.plots = snap.plots.share()
        db.project_tasks = snap.project_tasks.share()
        db.crm = snap.crm.share()
        db.directory = snap.directory  # read-only
        # get_average_session_duration() without a range converts the column in place (a reference
        # quirk that later visitor look-ups show as floats).
        db.session_seconds_are_float = False
        return db

    def compared_tables(self) -> dict[str, Table]:
        """The five tables the reference verifier compares, by container name."""
        return {
            "calendar": self.calendar_events,
            "email": self.emails,
            "analytics": self.plots,
            "project_management": self.project_tasks,
            "customer_relationship_manager": self.crm,
        }

    def differing_tables(self, other: Database) -> list[str]:
        """Names of compared tables that differ from ``other``'s under the reference's normalisation."""
        mine, theirs = self.compared_tables(), other.compared_tables()
        return [name for name in COMPARED_TABLES if not tables_equal(mine[name], theirs[name])]

    def __eq__(self, other) -> bool:
        if not isinstance(other, Database):
            return NotImplemented
        return not self.differing_tables(other)

    __hash__ = None  # type: ignore[assignment]  # the data model's way to make a class with __eq__ unhashable


def normalized_column_values(table: Table, col: str) -> list:
    """One column as the verifier sees it: ``.str.lower()`` unless the column's case matters."""
    from env_sim.workplace_assistant.tools.pandas_semantics import str_lower  # local: tools import this module

    values = table.column(col)
    return values if col in CASE_SENSITIVE_COLUMNS else str_lower(values)


def tables_equal(a: Table, b: Table) -> bool:
    """``convert_strs_to_lowercase(a).equals(convert_strs_to_lowercase(b))`` of the reference.

    Values, row order and index labels must match; strings compare case-insensitively except in
    status/list_name/board; a non-string cell in a lower-cased column becomes NaN (so 60 != "60"),
    and missing cells equal missing cells.
    """
    if a.rows is b.rows and a.labels is b.labels:
        if not a._owned:
            return True  # both still the untouched snapshot
        for col in a.columns:  # pandas would still validate the .str accessor
            if col not in CASE_SENSITIVE_COLUMNS:
                _validate_lowerable(a, col)
        return True
    if a.columns != b.columns or len(a.rows) != len(b.rows) or a.labels != b.labels:
        _validate_all(a)
        _validate_all(b)
        return False
    _validate_all(a)
    _validate_all(b)
    lowered = [c not in CASE_SENSITIVE_COLUMNS for c in a.columns]
    for ra, rb in zip(a.rows, b.rows):
        if ra is rb:
            continue
        for va, vb, low in zip(ra, rb, lowered):
            if low:
                va = va.lower() if isinstance(va, str) else None
                vb = vb.lower() if isinstance(vb, str) else None
            if not _cells_equal(va, vb):
                return False
    return True


def _cells_equal(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    try:
        return bool(a == b)
    except Exception:
        return False


def _validate_all(t: Table) -> None:
    for col in t.columns:
        if col not in CASE_SENSITIVE_COLUMNS:
            _validate_lowerable(t, col)


def _validate_lowerable(t: Table, col: str) -> None:
    """pandas refuses ``.str`` on a column without any string (only possible after odd writes)."""
    from env_sim.workplace_assistant.tools.pandas_semantics import check_str_accessor

    if not t._owned:
        return  # untouched snapshot columns always hold strings
    i = t.index_of[col]
    for row in t.rows:  # fast path: one string anywhere makes the column acceptable
        if isinstance(row[i], str):
            return
    check_str_accessor(t.column(col))


# --- snapshot loading ------------------------------------------------------------------------------


class _Snapshot:
    __slots__ = ("emails", "calendar_events", "analytics_data", "plots", "project_tasks", "crm", "directory")
    emails: Table
    calendar_events: Table
    analytics_data: Table
    plots: Table
    project_tasks: Table
    crm: Table
    directory: tuple[str, ...]


_SNAPSHOT: _Snapshot | None = None
_LOCK = threading.Lock()


def _snapshot() -> _Snapshot:
    global _SNAPSHOT
    snap = _SNAPSHOT
    if snap is None:
        with _LOCK:
            if _SNAPSHOT is None:
                _SNAPSHOT = _load_snapshot(DATA_DIR)
            snap = _SNAPSHOT
    return snap


def _read_table(path: Path) -> Table:
    """``pd.read_csv(path, dtype=str)``: strings as written, pandas' NA spellings -> None."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = tuple(next(reader))
            rows = []
            for lineno, rec in enumerate(reader, start=2):
                if len(rec) != len(header):
                    raise ValueError(f"{path}: line {lineno} has {len(rec)} fields, expected {len(header)}")
                rows.append(tuple(None if v in _NA_STRINGS else v for v in rec))
    except FileNotFoundError:
        raise FileNotFoundError(f"env_sim data file missing: {path}") from None
    return Table(header, rows, list(range(len(rows))), owned=True)


def _load_snapshot(data_dir: Path) -> _Snapshot:
    snap = _Snapshot()
    processed = data_dir / "processed"
    snap.emails = _read_table(processed / "emails.csv")
    snap.calendar_events = _read_table(processed / "calendar_events.csv")
    analytics = _read_table(processed / "analytics_data.csv")
    engaged = analytics.index_of["user_engaged"]
    analytics.rows = [r[:engaged] + (r[engaged] == "True",) + r[engaged + 1 :] for r in analytics.rows]
    snap.analytics_data = analytics
    snap.plots = Table(("file_path",), [], [], owned=True)
    snap.project_tasks = _read_table(processed / "project_tasks.csv")
    snap.crm = _read_table(processed / "customer_relationship_manager_data.csv")
    with open(data_dir / "raw" / "email_addresses.csv", newline="", encoding="utf-8") as fh:
        snap.directory = tuple(row[0] for row in csv.reader(fh) if row)
    for t in (snap.emails, snap.calendar_events, snap.analytics_data, snap.plots, snap.project_tasks, snap.crm):
        t._owned = False  # the snapshot is never written: share() copies on first write
    return snap
