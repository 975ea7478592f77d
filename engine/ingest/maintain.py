"""Deterministic temporal rules: how a resolved new fact changes the store.

The LM only labels; this module decides. For each new fact, given the labels of
its candidates:

* ``duplicate`` of a current fact: no new version; the message is linked to the
  existing fact as extra provenance (a DUPLICATE event).
* ``superseded`` / ``refined``: the new fact becomes the next version of the
  candidate's lineage. If it starts at or after the candidate, the candidate is
  closed (``valid_to`` = new ``valid_from``, ``expired_at`` = now,
  ``superseded_by`` = new id): a SUPERSEDE (or, for a refinement, UPDATE) event.
  If it starts *before* the candidate, it is late information about an older
  period: it is stored as a closed historical version (``valid_to`` = the
  candidate's ``valid_from``) and the newer fact is left untouched.
* ``corrects``: the candidate was never true ("sorry, I live in Porto, not
  Lisbon"). It is retired in transaction time only (``expired_at`` = now,
  ``superseded_by`` = new id, its valid time untouched) and the new fact continues
  its lineage, valid from the candidate's ``valid_from`` when that is earlier: a
  CORRECT event. ``as_of`` any date then answers the new fact, while ``known_at`` a
  moment before the correction still shows the old one.
* otherwise: a new fact (ADD).

Everything for one batch is applied in one unit of work (:meth:`Store.write`:
one DuckDB transaction, whose events, generations and index updates it handles).
Decisions are made outside the transaction (LM calls are slow), so each target is
checked again here: one that stopped being current meanwhile is left alone and
logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.storage.store import CURRENT, NewFact, Store
from engine.storage.writes import NewEvent, WriteTx

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Applied", "Decision", "Ref", "apply_decisions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ref:
    """A stored fact (``fact_id``) or a fact decided earlier in the same batch (``batch``)."""

    fact_id: int | None = None
    batch: int | None = None


@dataclass
class Decision:
    """What to do with one extracted fact; built by the pipeline, applied here.

    ``supersedes``: facts that stopped being true when this one started (a change);
    ``refines``: facts this one adds detail to; ``corrects``: facts that were never
    true, which this one replaces from their start (a correction). ``subject``,
    ``slot`` and ``value`` are stored on the new fact (see :class:`engine.types.Fact`);
    None for a fact without a slot.
    """

    text: str
    category: str | None
    metadata: dict[str, Any]
    user_id: str
    agent_id: str | None
    run_id: str | None
    valid_from: datetime
    message_id: int
    vector: np.ndarray
    duplicate_of: Ref | None = None
    supersedes: list[Ref] = field(default_factory=list)
    refines: list[Ref] = field(default_factory=list)
    subject: str | None = None
    slot: str | None = None
    value: str | None = None
    corrects: list[Ref] = field(default_factory=list)
    valid_to: datetime | None = None


@dataclass
class Applied:
    """The outcome of a batch: its audit events and index changes per user."""

    events: list[NewEvent] = field(default_factory=list)
    added: dict[str, list[int]] = field(default_factory=dict)
    removed: dict[str, list[int]] = field(default_factory=dict)


def _current_row(store: Store, fact_id: int) -> tuple[int, datetime, str] | None:
    rows = store.query(
        f"SELECT lineage_id, valid_from, text FROM facts WHERE id = ? AND {CURRENT}", [fact_id]
    )
    return (int(rows[0][0]), rows[0][1], rows[0][2]) if rows else None


def apply_decisions(
    target: WriteTx | Store,
    decisions: list[Decision],
    *,
    actor: str | None = None,
    recorded: datetime | None = None,
) -> Applied:
    """Apply decisions in order, in the unit of work ``target``.

    Given a :class:`Store` instead, it opens a unit itself (``store.write(actor=...,
    recorded=...)``; inside an open one it joins that, with that unit's actor and
    time); its events are written and the indexes told when that unit ends.
    """
    if isinstance(target, Store):
        if actor is None:
            raise TypeError("apply_decisions(store, ...) needs actor=")
        with target.write(actor=actor, recorded=recorded) as tx:
            return _apply(tx, decisions)
    return _apply(target, decisions)


def _apply(tx: WriteTx, decisions: list[Decision]) -> Applied:
    store = tx.store
    applied = Applied()
    ids: list[int | None] = []  # batch index -> new fact id (None for duplicates)

    def resolve(ref: Ref) -> int | None:
        return ref.fact_id if ref.batch is None else ids[ref.batch]

    def event(kind: str, decision: Decision, fact_id: int | None, lineage: int | None,
              old: str | None, reason: str | None) -> None:
        applied.events.append(tx.event(
            kind, user_id=decision.user_id, agent_id=decision.agent_id,
            run_id=decision.run_id, fact_id=fact_id, lineage_id=lineage, old_text=old,
            new_text=decision.text, reason=reason, message_id=decision.message_id))

    def retire(decision: Decision, fact_id: int, **closing: Any) -> None:
        tx.retire(fact_id, decision.user_id, **closing)
        applied.removed.setdefault(decision.user_id, []).append(fact_id)

    for decision in decisions:
        if decision.duplicate_of is not None:
            target = resolve(decision.duplicate_of)
            if target is not None and _current_row(store, target) is not None:
                tx.add_source(target, decision.message_id)
                event("DUPLICATE", decision, target, None, None, "same fact already known")
                ids.append(None)
                continue
        corrected: list[tuple[int, int, datetime, str, str]] = []
        targets: list[tuple[int, int, datetime, str, str]] = []
        seen: set[int] = set()
        for kind, refs in (("CORRECT", decision.corrects), ("SUPERSEDE", decision.supersedes),
                           ("UPDATE", decision.refines)):
            for ref in refs:
                target = resolve(ref)
                row = None if target is None else _current_row(store, target)
                if target is None or row is None:
                    log.info("fact %s is no longer current; not superseding it", target)
                    continue
                if target in seen:
                    continue
                seen.add(target)
                (corrected if kind == "CORRECT" else targets).append(
                    (target, row[0], row[1], row[2], kind))
        start = decision.valid_from
        newer = [t for t in targets if start < t[2]]
        older = [t for t in targets if start >= t[2]]
        ends = [t[2] for t in newer] + ([decision.valid_to] if decision.valid_to else [])
        valid_to = min(ends) if ends else None
        lineage = (corrected or older or newer)[0][1] if corrected or targets else None
        # a correction replaces the old fact for all the time it claimed to be true
        begins = min([start, *(t[2] for t in corrected)])
        (new_id,) = tx.insert(
            [NewFact(decision.text, decision.user_id, decision.agent_id, decision.run_id,
                     decision.category, decision.metadata, begins, decision.message_id,
                     lineage_id=lineage, valid_to=valid_to, subject=decision.subject,
                     slot=decision.slot, value=decision.value)],
            decision.vector.reshape(1, -1),
        )
        ids.append(new_id)
        lineage = lineage if lineage is not None else new_id
        for target, _, _, old_text, _ in corrected:
            retire(decision, target, superseded_by=new_id)
            event("CORRECT", decision, new_id, lineage, old_text, "corrects the earlier fact")
        for target, _, _, old_text, kind in older:
            retire(decision, target, valid_to=start, superseded_by=new_id)
            event(kind, decision, new_id, lineage, old_text,
                  "contradicts the earlier fact" if kind == "SUPERSEDE" else "adds detail")
        if not older and not corrected:
            reason = ("new fact" if valid_to is None else
                      f"about a period that ended: valid until {valid_to.isoformat()}"
                      if not newer else
                      f"about an older period: valid until {valid_to.isoformat()}, newer fact kept")
            event("ADD", decision, new_id, lineage, None, reason)
        if valid_to is None:
            applied.added.setdefault(decision.user_id, []).append(new_id)
    return applied
