"""The write unit of work: every change to facts goes through one.

``with store.write(actor=...) as tx:`` opens a DuckDB transaction (or joins the
one already open) in which the caller inserts and retires fact versions, links
provenance and appends audit events, all stamped with the unit's actor and time.
When the block ends the unit writes its events, bumps the generation of every
user whose current facts changed and queues one :class:`IndexChange` per user;
the store hands those to its commit listeners (the ``Memory``'s vector and
lexical indexes) once the outermost transaction has committed. If it rolls
back, nothing is handed on and the affected users' in-memory indexes are
dropped instead (see :meth:`engine.storage.store.Store.on_rollback`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.types import Event, Fact

if TYPE_CHECKING:
    import numpy as np

    from engine.storage.store import NewFact, Store

__all__ = ["IndexChange", "NewEvent", "WriteTx"]


@dataclass(frozen=True)
class NewEvent:
    """An audit event about to be appended (the id is assigned by the store)."""

    kind: str
    user_id: str
    agent_id: str | None
    run_id: str | None
    fact_id: int | None
    lineage_id: int | None
    old_text: str | None
    new_text: str | None
    at: datetime
    actor: str
    reason: str | None
    message_id: int | None

    def record(self, event_id: int) -> Event:
        """The public record of this event once written as ``event_id``."""
        return Event(id=event_id, kind=self.kind, fact_id=self.fact_id,
                     lineage_id=self.lineage_id, user_id=self.user_id, old_text=self.old_text,
                     new_text=self.new_text, at=self.at.replace(tzinfo=UTC), actor=self.actor,
                     reason=self.reason, message_id=self.message_id)


@dataclass
class IndexChange:
    """What one committed unit changed in a user's current facts, for the indexes.

    ``added`` are the ids of the new current versions, ``facts`` their records and
    ``vectors`` their embeddings (same order), so the indexes take them without a
    query. ``reset``: the change is not described (an import): drop the user's cached
    indexes and rebuild them from the store.
    """

    user_id: str
    generation: int
    added: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None
    facts: list[Fact] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    reset: bool = False


class WriteTx:
    """One unit of work on a store; made by :meth:`engine.storage.store.Store.write`."""

    def __init__(self, store: Store, *, actor: str, recorded: datetime) -> None:
        self.store = store
        self.actor = actor
        self.recorded = recorded
        self._new_events: list[NewEvent] = []
        self._events: list[Event] = []
        self._added: dict[str, list[tuple[Fact, Any]]] = {}
        self._removed: dict[str, list[int]] = {}
        self._reset: set[str] = set()

    # ---- facts -----------------------------------------------------------------------

    def insert(self, facts: Sequence[NewFact], vectors: np.ndarray) -> list[int]:
        """Insert fact versions recorded now; returns their ids. The current ones
        (no ``valid_to``) are added to the indexes on commit."""
        ids = self.store.insert_facts(facts, vectors, recorded_at=self.recorded)
        for row, (fact, fact_id) in enumerate(zip(facts, ids, strict=True)):
            if fact.valid_to is None:
                self._added.setdefault(fact.user_id, []).append(
                    (fact.record(fact_id, self.recorded), vectors[row]))
        return ids

    def retire(
        self,
        fact_id: int,
        user_id: str,
        *,
        valid_to: datetime | None = None,
        superseded_by: int | None = None,
    ) -> None:
        """Retire a current version now (closing its valid time too if ``valid_to``)."""
        self.store.retire(fact_id, at=self.recorded, valid_to=valid_to,
                          superseded_by=superseded_by)
        self._removed.setdefault(user_id, []).append(fact_id)

    def add_source(self, fact_id: int, message_id: int) -> None:
        """Record that a message said this fact again (provenance, no new version)."""
        self.store.add_source(fact_id, message_id, self.recorded)

    def reset(self, user_ids: Sequence[str]) -> None:
        """These users' facts changed in ways not described here (an import): bump their
        generations and have their indexes rebuilt from the store."""
        self._reset.update(user_ids)

    # ---- events ----------------------------------------------------------------------

    def event(
        self,
        kind: str,
        *,
        user_id: str,
        agent_id: str | None = None,
        run_id: str | None = None,
        fact_id: int | None = None,
        lineage_id: int | None = None,
        old_text: str | None = None,
        new_text: str | None = None,
        reason: str | None = None,
        message_id: int | None = None,
    ) -> NewEvent:
        """Append an audit event, stamped with the unit's actor and time."""
        event = NewEvent(kind=kind, user_id=user_id, agent_id=agent_id, run_id=run_id,
                         fact_id=fact_id, lineage_id=lineage_id, old_text=old_text,
                         new_text=new_text, at=self.recorded, actor=self.actor, reason=reason,
                         message_id=message_id)
        self._new_events.append(event)
        return event

    @property
    def events(self) -> list[Event]:
        """The events this unit wrote, with their ids (complete once the block ends)."""
        return list(self._events)

    # ---- the end of the block --------------------------------------------------------

    def finish(self) -> list[IndexChange]:
        """Write the events and bump generations (inside the transaction); returns the
        index changes to hand on after the commit."""
        import numpy as np

        event_ids = self.store.insert_events(self._new_events)
        self._events.extend(e.record(i) for e, i in zip(self._new_events, event_ids,
                                                        strict=True))
        self._new_events.clear()
        users = sorted(set(self._added) | set(self._removed) | self._reset)
        generations = self.store.bump_generation(users)
        changes = []
        for user in users:
            if user in self._reset:
                changes.append(IndexChange(user, generations[user], reset=True))
                continue
            removed = self._removed.get(user, [])
            gone = set(removed)
            # a version inserted and retired in the same unit never reaches an index
            added = [(f, v) for f, v in self._added.get(user, []) if f.id not in gone]
            changes.append(IndexChange(
                user, generations[user], added=[f.id for f, _ in added],
                vectors=np.stack([v for _, v in added]) if added else None,
                facts=[f for f, _ in added], removed=list(removed)))
        return changes
