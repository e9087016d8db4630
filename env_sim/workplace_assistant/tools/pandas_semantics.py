"""The handful of pandas/numpy behaviours the reference tools depend on, in plain Python.

The reference keeps every table in a pandas DataFrame of object columns (pandas 2.x,
``read_csv(dtype=str)``). What a model sees and which calls fail depend on a few of pandas'
rules, so they are reproduced here rather than "fixed":

* ``Series == x`` with a list ``x`` raises unless the lengths match; ``x in ndarray`` broadcasts.
* ``.str`` methods turn non-string cells into NaN, and refuse columns holding no strings at all.
* boolean masks holding NaN (from ``.str.contains`` on such cells) raise on indexing.
* ``pd.Timestamp(value)`` accepts ISO text, a good part of dateutil's formats, and numbers
  (nanoseconds since the epoch).

Missing cells are ``None`` here (pandas' NaN).
"""

from __future__ import annotations

import datetime as _dt
import operator
import re

MASK_WITH_NA = "Cannot mask with non-boolean array containing NA / NaN values"
STR_ACCESSOR_ERROR = "Can only use .str accessor with string values!"


# --- comparisons -------------------------------------------------------------------------------


def series_eq(values: list, x) -> list[bool]:
    """``Series(values) == x`` for an object column."""
    if isinstance(x, str):  # str == anything never raises
        return [v == x for v in values]
    if isinstance(x, list):
        if len(x) != len(values):
            raise ValueError("Lengths must match to compare", (len(values),), (len(x),))
        return [v is not None and v == y for v, y in zip(values, x)]
    return [v is not None and _safe_eq(v, x) for v in values]


def series_compare(values: list, x, op) -> list[bool]:
    """``Series(values) <op> x`` (op is >=, <= ...): missing cells are False, type errors propagate."""
    if isinstance(x, list):
        if len(x) != len(values):
            raise ValueError("Lengths must match to compare", (len(values),), (len(x),))
        return [v is not None and bool(op(v, y)) for v, y in zip(values, x)]
    return [v is not None and bool(op(v, x)) for v in values]


def array_contains(values: list, x) -> bool:
    """``x in series.values`` (numpy: ``(arr == x).any()`` with broadcasting)."""
    if isinstance(x, str):
        return x in values
    if isinstance(x, list):
        n, k = len(values), len(x)
        if k == n:
            return any(_safe_eq(v, y) for v, y in zip(values, x))
        if k == 1:
            return any(_safe_eq(v, x[0]) for v in values)
        if n == 1:
            return any(_safe_eq(values[0], y) for y in x)
        raise ValueError(f"operands could not be broadcast together with shapes ({n},) ({k},) ")
    return any(_safe_eq(v, x) for v in values)


def _safe_eq(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # pandas/numpy treat a failing comparison as "not equal"
        return False


GE = operator.ge
LE = operator.le


# --- .str accessor -------------------------------------------------------------------------------


def check_str_accessor(values: list) -> None:
    """Raise like pandas when ``.str`` is used on an object column that infers to a non-string type."""
    kinds = set()
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            continue
        if isinstance(v, str):
            return
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, (int, float)):
            kinds.add("number")
        else:
            return  # lists, dicts ... infer as "mixed", which pandas allows
    if kinds:
        raise AttributeError(STR_ACCESSOR_ERROR)


def str_lower(values: list) -> list:
    """``Series.str.lower()``: strings lowered, every other cell missing."""
    check_str_accessor(values)
    return [v.lower() if isinstance(v, str) else None for v in values]


def compile_contains(pat, case: bool = True) -> re.Pattern:
    """The regex ``Series.str.contains(pat, case=...)`` searches with (regex=True is pandas' default)."""
    re.compile(pat)  # pandas compiles once without flags to warn about groups; same errors
    return re.compile(pat, 0 if case else re.IGNORECASE)


def contains_mask(values: list, pat, case: bool = True, na_false: bool = False) -> list[bool]:
    """Boolean mask of ``Series.str.contains`` used for indexing.

    Without ``na=False`` a non-string cell yields NaN, and indexing with that mask raises.
    """
    check_str_accessor(values)
    rx = compile_contains(pat, case)
    out = []
    for v in values:
        if isinstance(v, str):
            out.append(rx.search(v) is not None)
        elif na_false:
            out.append(False)
        else:
            raise ValueError(MASK_WITH_NA)
    return out


def fmt(value) -> str:
    """``f"{cell}"`` as pandas would render the cell (missing -> 'nan')."""
    return "nan" if value is None else f"{value}"


# --- pd.Timestamp --------------------------------------------------------------------------------

_EPOCH = _dt.datetime(1970, 1, 1)

_ISO = re.compile(
    r"^(?P<y>\d{4})(?:(?P<sep>-?)(?P<m>\d{2})(?:(?P=sep)(?P<d>\d{2}))?)?"
    r"(?:[T ](?P<H>\d{2})(?::?(?P<M>\d{2})(?::?(?P<S>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?)?"
    r"\s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?$"
)
_CANONICAL = re.compile(r"\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2}:\d{2})?")
_MONTHS = {
    name: i + 1
    for i, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ]
    )
    for name in names
}
_WEEKDAYS = {
    "mon",
    "monday",
    "tue",
    "tues",
    "tuesday",
    "wed",
    "wednesday",
    "thu",
    "thur",
    "thurs",
    "thursday",
    "fri",
    "friday",
    "sat",
    "saturday",
    "sun",
    "sunday",
}
_JUMP = {"at", "on", "and", "ad", "m", "t", "of", "st", "nd", "rd", "th"}
_TOKEN = re.compile(r"\d+(?::\d+)+(?:\.\d+)?|\d+(?:[/.\-]\d+)+|\d+|[a-z]+|[+-]\d{2}:?\d{2}|\S", re.IGNORECASE)


def to_timestamp(value) -> _dt.datetime:
    """``pd.Timestamp(value)`` for the inputs a model can send (str, int, float); raises like pandas."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError(f"Cannot convert input [{value}] of type {type(value)} to Timestamp")
    if isinstance(value, (int, float)):
        if value != value:
            raise ValueError("NaT")  # pd.Timestamp(nan) is NaT; comparisons then fail
        return _EPOCH + _dt.timedelta(microseconds=int(value) / 1000)
    if _CANONICAL.fullmatch(value):  # the tables' own format: let the C parser do it
        try:
            return _dt.datetime.fromisoformat(value)
        except ValueError:
            pass  # out-of-range parts: the slow path words the error as pandas does
    text = value.strip()
    low = text.lower()
    if low == "now":
        return _dt.datetime.now()
    if low == "today":
        return _dt.datetime.now()
    m = _ISO.match(text)
    if m and not (m["m"] and not m["d"] and not m["sep"]):  # "YYYYMM" is not ISO for pandas
        return _from_parts(value, m)
    return _parse_loose(value)


def _from_parts(original: str, m: re.Match) -> _dt.datetime:
    y = int(m["y"])
    mo = int(m["m"] or 1)
    d = int(m["d"] or 1)
    hh, mi, ss = int(m["H"] or 0), int(m["M"] or 0), int(m["S"] or 0)
    frac = int((m["f"] or "0")[:6].ljust(6, "0"))
    _check_ranges(original, mo, hh, mi, ss)
    try:
        out = _dt.datetime(y, mo, d, hh, mi, ss, frac)
    except ValueError:
        raise ValueError(f"day is out of range for month: {original}") from None
    tz = m["tz"]
    if tz:
        out = out.replace(tzinfo=_parse_tz(tz))
    return out


def _check_ranges(original: str, mo: int, hh: int, mi: int, ss: int) -> None:
    if not 1 <= mo <= 12:
        raise ValueError(f"month must be in 1..12: {original}")
    if not 0 <= hh <= 23:
        raise ValueError(f"hour must be in 0..23: {original}")
    if not 0 <= mi <= 59:
        raise ValueError(f"minute must be in 0..59: {original}")
    if not 0 <= ss <= 59:
        raise ValueError(f"second must be in 0..59: {original}")


def _parse_tz(tz: str) -> _dt.timezone:
    if tz in ("Z", "z", "utc", "gmt"):
        return _dt.timezone.utc
    sign = -1 if tz[0] == "-" else 1
    digits = tz[1:].replace(":", "")
    return _dt.timezone(sign * _dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0)))


def _parse_loose(original: str) -> _dt.datetime:
    """A reduced dateutil as pandas drives it: month names, m/d/y (or d/m/y when m > 12) and y/m/d
    dates, clock times, am/pm, ordinals. A missing year/month/day defaults to 0001-01-01, except
    that a bare clock time is taken on today's date."""
    unknown = ValueError(f"Unknown datetime string format, unable to parse: {original}")
    text = original.strip()
    if text and text[0] != "0":
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is not None and number < 1000:
            raise ValueError(f'Given date string "{original}" not likely a datetime')
    if text.isdigit():
        if len(text) == 6:  # dateutil reads YYMMDD
            return _checked(original, 2000 + int(text[:2]), int(text[2:4]), int(text[4:]), 0, 0, 0, 0, None)
        raise ValueError(f"year {text} is out of range: {original}")
    year = month = day = None
    hh = mi = ss = 0
    frac = 0
    ampm = None
    tz = None
    numbers: list[int] = []
    saw_date = saw_time = False
    last_was_number = False
    for raw in _TOKEN.findall(text):
        tok = raw.lower()
        was_number, last_was_number = last_was_number, tok.isdigit()
        if tok in ",;'" or tok in "-/." or tok in _JUMP or tok in _WEEKDAYS:
            continue
        if tok in _MONTHS:
            month = _MONTHS[tok]
            saw_date = True
        elif tok in ("am", "pm", "a", "p"):
            ampm = tok[0]
            if was_number:
                hh = numbers.pop()
                saw_time = True
        elif tok in ("z", "utc", "gmt"):
            tz = _dt.timezone.utc
        elif saw_time and raw.isalpha() and raw.isupper() and len(raw) <= 5:
            continue  # a time-zone name dateutil does not know: ignored
        elif tok[0] in "+-" and len(tok) > 1:
            tz = _parse_tz(tok)
        elif ":" in tok:
            parts = tok.split(":")
            hh, mi = int(parts[0]), int(parts[1])
            if len(parts) > 2:
                sec = parts[2].split(".")
                ss = int(sec[0])
                if len(sec) > 1:
                    frac = int(sec[1][:6].ljust(6, "0"))
            saw_time = True
        elif re.fullmatch(r"\d+(?:[/.\-]\d+)+", tok):
            pieces = re.split(r"[/.\-]", tok)
            parts = [int(p) for p in pieces]
            if len(parts) not in (2, 3):
                raise unknown
            if len(pieces[0]) == 4:
                year, month, day = parts[0], parts[1], (parts[2] if len(parts) == 3 else 1)
            elif len(parts) == 3:
                month, day, year = parts
                if month > 12 >= day:
                    month, day = day, month
                if year < 100:
                    year += 2000
            else:
                month, day = parts
                if month > 12 >= day:
                    month, day = day, month
            saw_date = True
        elif tok.isdigit():
            numbers.append(int(tok))
            saw_date = True
        else:
            raise unknown
    for n in numbers:
        if n >= 1000 or (year is None and day is not None and month is not None):
            year = n if n >= 100 else 2000 + n
        elif day is None and month is not None and n <= 31:
            day = n
        elif month is None and n <= 12 and day is None:
            month = n
        elif day is None and n <= 31:
            day = n
        else:
            raise unknown
    if not saw_date and not saw_time:
        raise ValueError(f"Unable to parse datetime string: {original}")
    if ampm == "p" and hh < 12:
        hh += 12
    elif ampm == "a" and hh == 12:
        hh = 0
    if not saw_date:
        today = _dt.date.today()
        year, month, day = today.year, today.month, today.day
    return _checked(original, year or 1, month or 1, day or 1, hh, mi, ss, frac, tz)


def _checked(original, year, month, day, hh, mi, ss, frac, tz) -> _dt.datetime:
    _check_ranges(original, month, hh, mi, ss)
    try:
        out = _dt.datetime(year, month, day, hh, mi, ss, frac)
    except ValueError:
        raise ValueError(f"day is out of range for month: {original}") from None
    return out.replace(tzinfo=tz) if tz else out


def timestamps_compare(a: _dt.datetime, b: _dt.datetime, op) -> bool:
    """Compare two timestamps; mixing tz-aware and naive raises pandas' TypeError."""
    if (a.tzinfo is None) != (b.tzinfo is None):
        raise TypeError("Cannot compare tz-naive and tz-aware timestamps")
    return op(a, b)


def series_max(values: list):
    """``Series.max()`` of an object column: numpy keeps ``a`` while ``a >= b``; empty -> NaN."""
    present = [v for v in values if v is not None]
    if not present:
        return float("nan")
    best = present[0]
    for v in present[1:]:
        if not best >= v:
            best = v
    return best


def paginate(total: int, page, page_size):
    """The reference's page arithmetic, kept operation for operation (its errors included).

    Returns (page, total_pages, start, end); callers slice only when they return results, as the
    reference does (a float page_size fails only then).
    """
    total_pages = (total + page_size - 1) // page_size
    page = max(1, min(page, total_pages)) if total_pages > 0 else 1
    start = (page - 1) * page_size
    end = min(start + page_size, total)
    return page, total_pages, start, end


def loc_values(value, n_rows: int) -> list:
    """What ``df.loc[mask, col] = value`` writes into the ``n_rows`` selected cells.

    A dict aligns on the index (string keys never match the integer labels: NaN); a list must
    have one item per selected row.
    """
    if isinstance(value, dict):
        return [None] * n_rows
    if isinstance(value, list):
        if len(value) != n_rows:
            raise ValueError("setting an array element with a sequence.")
        return list(value)
    return [value] * n_rows
