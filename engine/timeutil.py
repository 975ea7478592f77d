"""Time parsing and normalisation: every timestamp is stored as naive UTC.

Callers may pass aware or naive datetimes, dates, or ISO 8601 strings; naive
values are taken as UTC. Values read back from DuckDB are returned aware (UTC).
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from engine.errors import InvalidInputError

__all__ = ["TimeLike", "micros", "now_utc", "to_aware", "to_storage"]

TimeLike = datetime | date | str


def now_utc() -> datetime:
    """The current time as naive UTC (the storage form), to the microsecond."""
    return datetime.now(UTC).replace(tzinfo=None)


def to_storage(value: TimeLike, *, name: str = "time") -> datetime:
    """Convert a datetime, date or ISO 8601 string to naive UTC for storage."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError as exc:
            raise InvalidInputError(
                f"{name}: {value!r} is not an ISO 8601 date or time (e.g. 2026-05-01 or "
                "2026-05-01T09:30:00+02:00)"
            ) from exc
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    raise InvalidInputError(
        f"{name}: expected a datetime, date or ISO 8601 string, got {type(value).__name__}"
    )


def to_aware(value: datetime | None) -> datetime | None:
    """Mark a stored naive-UTC datetime as UTC (None stays None)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime) -> int:
    """Integer microseconds since 1970 of an aware or naive-UTC time, exactly (no float
    rounding, so differences of two are exact)."""
    epoch = _EPOCH if value.tzinfo is not None else _EPOCH.replace(tzinfo=None)
    delta = value - epoch
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
