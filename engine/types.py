"""Plain data objects the engine returns: facts, search hits, events, add results.

They are frozen dataclasses with ``to_dict()`` so the CLI and exports can print
them as JSON without knowing their fields, and ``from_dict()`` so the HTTP client
(:mod:`engine.client`) hands back the very types an in-process ``Memory`` returns.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

__all__ = ["AddResult", "Context", "Event", "Fact", "Message", "SearchHit"]


def _jsonable(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


R = TypeVar("R", bound="_Record")


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (datetimes as ISO 8601 strings)."""
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
        }

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        """The record back from :meth:`to_dict`'s output; keys it does not know are ignored
        (a newer server may send more)."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name not in data:
                continue
            value = data[f.name]
            if value is not None and "datetime" in str(f.type):
                value = datetime.fromisoformat(value)
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass(frozen=True)
class Fact(_Record):
    """One version of a fact.

    A fact is *current* when ``valid_to`` and ``expired_at`` are both None.
    ``valid_from``/``valid_to`` say when it was true in the user's world;
    ``recorded_at``/``expired_at`` say when the engine learned and retired it.
    Every version of the same fact shares ``lineage_id``.

    ``subject`` (``"user"`` or a person such as ``"sister Ana"``), ``slot`` (an
    attribute key such as ``"home city"``) and ``value`` (``"Porto"``) say which
    attribute the fact sets; all three are None for facts stored without a slot.
    """

    id: int
    text: str
    user_id: str
    agent_id: str | None
    run_id: str | None
    category: str | None
    metadata: dict[str, Any]
    valid_from: datetime
    valid_to: datetime | None
    recorded_at: datetime
    expired_at: datetime | None
    superseded_by: int | None
    lineage_id: int
    source_message_id: int | None
    subject: str | None = None
    slot: str | None = None
    value: str | None = None

    @property
    def is_current(self) -> bool:
        return self.valid_to is None and self.expired_at is None


@dataclass(frozen=True)
class SearchHit(_Record):
    """A fact returned by ``search`` with its fused score (higher is better).

    ``explain`` holds each signal's raw value and contribution when the search
    was made with ``explain=True``, else None. ``subject``, ``slot`` and ``value``
    are the fact's (see :class:`Fact`).
    """

    id: int
    text: str
    score: float
    user_id: str
    agent_id: str | None
    run_id: str | None
    category: str | None
    metadata: dict[str, Any]
    valid_from: datetime
    valid_to: datetime | None
    explain: dict[str, Any] | None = None
    subject: str | None = None
    slot: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class Event(_Record):
    """One entry of the append-only audit log.

    ``kind`` is one of ADD, UPDATE, SUPERSEDE, CORRECT, DUPLICATE, DELETE, RESTORE,
    PURGE. SUPERSEDE: the old fact stopped being true when the new one started (its
    ``valid_to`` is set); CORRECT: the old fact was never true (it is retired in
    transaction time only and the new one takes over its valid time).
    """

    id: int
    kind: str
    fact_id: int | None
    lineage_id: int | None
    user_id: str
    old_text: str | None
    new_text: str | None
    at: datetime
    actor: str
    reason: str | None
    message_id: int | None = None


@dataclass(frozen=True)
class Message(_Record):
    """A raw message as stored, before or after extraction."""

    id: int
    user_id: str
    agent_id: str | None
    run_id: str | None
    role: str
    content: str
    metadata: dict[str, Any]
    observed_at: datetime
    ingested_at: datetime
    status: str
    error: str | None


@dataclass(frozen=True)
class AddResult(_Record):
    """What one ``add`` call changed: the stored message ids and the events.

    ``pending`` lists messages stored but not yet turned into facts: extraction
    runs in the background (``wait=False``) or failed (``errors`` says why); they
    are retried when the store is next opened and shown by ``memengine status``.
    """

    message_ids: list[int] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AddResult:
        """The result back from :meth:`to_dict`'s output, its events as :class:`Event`."""
        return cls(
            message_ids=list(data.get("message_ids", [])),
            events=[Event.from_dict(e) for e in data.get("events", [])],
            pending=list(data.get("pending", [])),
            errors=list(data.get("errors", [])),
        )

    @property
    def fact_ids(self) -> list[int]:
        """Ids of the facts added or updated by this call (no duplicates)."""
        seen: dict[int, None] = {}
        for event in self.events:
            if event.fact_id is not None and event.kind in (
                "ADD", "UPDATE", "SUPERSEDE", "CORRECT", "DUPLICATE"
            ):
                seen[event.fact_id] = None
        return list(seen)


@dataclass(frozen=True)
class Context(_Record):
    """The memory block an application puts in its prompt, from ``Memory.context``.

    ``text`` is the block itself (empty when nothing relevant is known), ``facts`` the
    facts shown in it, in the order shown. ``tokens`` is the size of ``text`` as counted by
    ``token_count`` (the local LM's own tokenizer when a model is loaded, else an
    approximation), never more than ``max_tokens``. ``truncated`` says whether relevant
    facts (or their earlier versions) were left out to fit. ``as_of`` is the time the
    block describes (None: now).
    """

    text: str
    facts: list[Fact]
    tokens: int
    max_tokens: int
    token_count: str
    truncated: bool
    as_of: datetime | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Context:
        """The block back from :meth:`to_dict`'s output, its facts as :class:`Fact`."""
        as_of = data.get("as_of")
        return cls(
            text=data["text"],
            facts=[Fact.from_dict(f) for f in data.get("facts", [])],
            tokens=int(data["tokens"]),
            max_tokens=int(data["max_tokens"]),
            token_count=data["token_count"],
            truncated=bool(data["truncated"]),
            as_of=None if as_of is None else datetime.fromisoformat(as_of),
        )
