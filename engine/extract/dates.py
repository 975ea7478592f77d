"""Relative date expressions resolved against the observation date, in code.

Small models are poor at calendar arithmetic ("next week" said on 2024-06-12). The
extractor finds the relative expressions in the messages and gives the model their
dates as hints ("next week = 2024-06-19"), so the model only has to copy one. Relative
expressions are read in English only; past years ("Em 2016 eu morava em Manaus") are
hinted in any language.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta

__all__ = ["UNKNOWN_START", "date_hints", "resolve_relative", "stated_date", "stated_period"]

_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}
_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
            "seven": 7, "eight": 8, "nine": 9, "ten": 10, "couple of": 2, "few": 3}
_NUM = r"(\d+|an?|one|two|three|four|five|six|seven|eight|nine|ten|couple of|few)"
_DAY = "|".join(_WEEKDAYS)
_MONTH = "|".join(_MONTHS)

_PATTERNS = [
    r"\b(today|tonight|tomorrow|yesterday|the day after tomorrow|the day before yesterday)\b",
    rf"\b(next|last|this) (week|weekend|month|year|{_DAY}|{_MONTH})\b",
    rf"\b(in|within) {_NUM} (days?|weeks?|months?|years?)\b",
    rf"\b{_NUM} (days?|weeks?|months?|years?) ago\b",
    rf"\b(on|this coming) ({_DAY})\b",
    rf"\b(since|in|from|until|by) ({_MONTH})\b",
]
_RE = re.compile("|".join(f"(?:{p})" for p in _PATTERNS), re.IGNORECASE)


def _add_months(d: date, months: int) -> date:
    month = d.month - 1 + months
    year = d.year + month // 12
    month = month % 12 + 1
    return date(year, month, min(d.day, calendar.monthrange(year, month)[1]))


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS[word]


def resolve_relative(expr: str, today: date) -> date | None:
    """The date an English relative expression names, said on ``today`` (None if unknown).

    "next week" / "last week" is seven days on / back (a single date inside the week
    named, the same weekday as said); weekends start on Saturday; a month or year means
    its first day; a bare month name ("in May") is the next such month, "since May" the last one.
    """
    e = " ".join(expr.lower().split())
    simple = {"today": 0, "tonight": 0, "tomorrow": 1, "yesterday": -1,
              "the day after tomorrow": 2, "the day before yesterday": -2}
    if e in simple:
        return today + timedelta(days=simple[e])
    m = re.fullmatch(rf"(in|within) {_NUM} (day|week|month|year)s?", e)
    if m or (m := re.fullmatch(rf"{_NUM} (day|week|month|year)s? ago", e)):
        groups = m.groups()
        n, unit = (_count(groups[-2]), groups[-1])
        sign = -1 if e.endswith("ago") else 1
        if unit == "day":
            return today + timedelta(days=sign * n)
        if unit == "week":
            return today + timedelta(weeks=sign * n)
        return _add_months(today, sign * n * (12 if unit == "year" else 1))
    m = re.fullmatch(r"(next|last|this|on|this coming|since|in|from|until|by) (\w+)", e)
    if not m:
        return None
    which, what = m.groups()
    monday = today - timedelta(days=today.weekday())
    if what == "week":
        shift = {"next": 7, "last": -7, "this": 0}.get(which)
        return None if shift is None else today + timedelta(days=shift)
    if what == "weekend":
        shift = {"next": 7, "last": -7, "this": 0}.get(which)
        return None if shift is None else monday + timedelta(days=5 + shift)
    if what == "month":
        first = today.replace(day=1)
        shift = {"next": 1, "last": -1, "this": 0}.get(which)
        return None if shift is None else _add_months(first, shift)
    if what == "year":
        shift = {"next": 1, "last": -1, "this": 0}.get(which)
        return None if shift is None else date(today.year + shift, 1, 1)
    if what in _WEEKDAYS:
        delta = (_WEEKDAYS[what] - today.weekday()) % 7
        if which == "last":
            return today - timedelta(days=(today.weekday() - _WEEKDAYS[what]) % 7 or 7)
        if which == "next":
            return today + timedelta(days=delta or 7)
        return today + timedelta(days=delta)
    if what in _MONTHS:
        month = _MONTHS[what]
        if which in ("last", "since"):
            year = today.year if month < today.month else today.year - 1
            if which == "since" and month == today.month:
                year = today.year
        elif which == "this":
            year = today.year
        else:  # next, in, from, until, by: the next time that month comes
            year = today.year if month > today.month else today.year + 1
            if which != "next" and month == today.month:
                year = today.year
        return date(year, month, 1)
    return None


def stated_date(text: str, today: date) -> date | None:
    """The date of the first unambiguous relative expression in ``text`` ("next week"),
    or None. Used when a fact's own text names its time but the model left
    ``valid_from`` empty; month names alone ("in January") are ambiguous and skipped."""
    for match in _RE.finditer(text):
        expr = " ".join(match.group(0).lower().split())
        if re.fullmatch(rf"(in|from|until|by) ({_MONTH})", expr):
            continue
        resolved = resolve_relative(expr, today)
        if resolved is not None:
            return resolved
    return None


def date_hints(text: str, today: date) -> str:
    """Lines ``"<expression> = YYYY-MM-DD"`` for each relative expression in ``text``
    (``"in january = 2024-01-01 if past, 2025-01-01 if future"`` when the tense decides),
    and ``"2019 = 2019-01-01"`` for each past year it names."""
    seen: dict[str, str] = {}
    for match in _RE.finditer(text):
        expr = " ".join(match.group(0).lower().split())
        if expr in seen:
            continue
        resolved = resolve_relative(expr, today)
        if resolved is None:
            continue
        seen[expr] = resolved.isoformat()
        month_only = re.fullmatch(rf"(in|from|until|by) ({_MONTH})", expr)
        if month_only and resolved.month != today.month:
            # "in January" is past or future depending on the tense: give both.
            other = resolved.replace(year=resolved.year - 1)
            seen[expr] = f"{other.isoformat()} if past, {resolved.isoformat()} if future"
    for match in re.finditer(rf"\b{_YEAR}\b", text):
        year = int(match.group(1))
        if year < today.year and match.group(1) not in seen:
            seen[match.group(1)] = date(year, 1, 1).isoformat()  # "in 2019": any language
    return "\n".join(f"{k} = {v}" for k, v in seen.items()) or "none"


UNKNOWN_START = datetime(1970, 1, 1)
"""The valid_from of a fact that says when it ended but not when it began ("User had a
BlackBerry until 2014"): it is taken to have held from any earlier time on."""

_YEAR = r"(1[89]\d\d|20\d\d)"
_START_YEAR = re.compile(rf"\b(?:in|since|from|during)\s+(?:early\s+|late\s+)?{_YEAR}\b",
                         re.IGNORECASE)
_END_YEAR = re.compile(rf"\b(until|till|up to|to|before)\s+{_YEAR}\b", re.IGNORECASE)


def stated_period(text: str, today: date) -> tuple[date | None, date | None]:
    """``(start, end)`` that a fact's English sentence names with years: "in 2019" or
    "since 2019" starts on 2019-01-01; "until 2014" ends on 2015-01-01 (the whole of 2014
    included), "before 2014" on 2014-01-01. Years after ``today`` are ignored (a plan is
    no period), and an end only counts when it is past."""
    start = end = None
    for match in _START_YEAR.finditer(text):
        year = int(match.group(1))
        if year <= today.year:
            start = date(year, 1, 1)
            break
    for match in _END_YEAR.finditer(text):
        word, year = match.group(1).lower(), int(match.group(2))
        if word == "to" and start is None:
            continue  # "to 2014" only closes a "from 2010"
        stop = date(year, 1, 1) if word == "before" else date(year + 1, 1, 1)
        if stop <= today and (start is None or start < stop):
            end = stop
            break
    return start, end
