"""Turning DuckDB rows into the public record types, in one place."""

from __future__ import annotations

import json
from typing import Any

from engine.timeutil import to_aware
from engine.types import Event, Fact, Message

__all__ = ["EVENT_COLUMNS", "MESSAGE_COLUMNS", "event_from_row", "fact_from_row",
           "message_from_row"]

EVENT_COLUMNS = (
    "id, kind, fact_id, lineage_id, user_id, old_text, new_text, occurred_at, actor, reason, "
    "message_id"
)
MESSAGE_COLUMNS = (
    "id, user_id, agent_id, run_id, role, content, metadata, observed_at, ingested_at, "
    "status, error"
)


def _meta(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return raw
    loaded = json.loads(raw)
    return loaded if isinstance(loaded, dict) else {}


def fact_from_row(row: tuple[Any, ...]) -> Fact:
    """A ``Fact`` from a row selected with ``store.FACT_COLUMNS``."""
    valid_from = to_aware(row[7])
    recorded_at = to_aware(row[9])
    assert valid_from is not None and recorded_at is not None
    return Fact(
        id=int(row[0]),
        text=row[1],
        user_id=row[2],
        agent_id=row[3],
        run_id=row[4],
        category=row[5],
        metadata=_meta(row[6]),
        valid_from=valid_from,
        valid_to=to_aware(row[8]),
        recorded_at=recorded_at,
        expired_at=to_aware(row[10]),
        superseded_by=None if row[11] is None else int(row[11]),
        lineage_id=int(row[12]),
        source_message_id=None if row[13] is None else int(row[13]),
        subject=row[14],
        slot=row[15],
        value=row[16],
    )


def event_from_row(row: tuple[Any, ...]) -> Event:
    """An ``Event`` from a row selected with ``EVENT_COLUMNS``."""
    at = to_aware(row[7])
    assert at is not None
    return Event(
        id=int(row[0]),
        kind=row[1],
        fact_id=None if row[2] is None else int(row[2]),
        lineage_id=None if row[3] is None else int(row[3]),
        user_id=row[4],
        old_text=row[5],
        new_text=row[6],
        at=at,
        actor=row[8],
        reason=row[9],
        message_id=None if row[10] is None else int(row[10]),
    )


def message_from_row(row: tuple[Any, ...]) -> Message:
    """A ``Message`` from a row selected with ``MESSAGE_COLUMNS``."""
    observed_at = to_aware(row[7])
    ingested_at = to_aware(row[8])
    assert observed_at is not None and ingested_at is not None
    return Message(
        id=int(row[0]),
        user_id=row[1],
        agent_id=row[2],
        run_id=row[3],
        role=row[4],
        content=row[5],
        metadata=_meta(row[6]),
        observed_at=observed_at,
        ingested_at=ingested_at,
        status=row[9],
        error=row[10],
    )
