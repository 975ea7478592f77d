"""The add pipeline with inference: extract, find candidates, resolve, decide.

It turns stored messages into :class:`~engine.maintain.Decision` objects and
touches no table: the LM calls here are slow, so they run outside any DuckDB
transaction, and :func:`engine.maintain.apply_decisions` applies the result in
one. Candidates for a new fact are the user's current facts in the same agent
scope whose cosine similarity clears ``CANDIDATE_MIN_SIMILARITY`` (plus facts
decided earlier in the same batch), shown to the LM as aliases 0..n-1. Facts
without candidates skip the resolve call entirely.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.extract import Candidate, ExtractedFact, Extractor, Turn
from engine.maintain import Decision, Ref
from engine.store import CURRENT, Store, content_hash, id_list

if TYPE_CHECKING:
    from engine.embed import Embedder
    from engine.index import VectorIndex

__all__ = ["CANDIDATE_MIN_SIMILARITY", "MAX_CANDIDATES", "PendingMessage", "decide"]

log = logging.getLogger(__name__)

CANDIDATE_MIN_SIMILARITY = 0.5
"""Cosine similarity (MiniLM) above which a stored fact may be the same topic."""
MAX_CANDIDATES = 5


@dataclass(frozen=True)
class PendingMessage:
    """A stored message waiting for extraction."""

    id: int
    user_id: str
    agent_id: str | None
    run_id: str | None
    role: str
    name: str | None
    content: str
    metadata: dict[str, Any]
    observed_at: datetime


def _groups(messages: Sequence[PendingMessage]) -> list[list[PendingMessage]]:
    groups: dict[tuple[str, str | None, str | None], list[PendingMessage]] = {}
    for message in messages:
        groups.setdefault((message.user_id, message.agent_id, message.run_id), []).append(message)
    return list(groups.values())


def _stored_candidates(
    store: Store, index: VectorIndex, user: str, agent: str | None, vector: Any
) -> list[tuple[int, str, datetime, float]]:
    ids, sims = index.search(user, vector, 4 * MAX_CANDIDATES)
    close = {i: s for i, s in zip(ids, sims, strict=True) if s >= CANDIDATE_MIN_SIMILARITY}
    if not close:
        return []
    rows = store.query(
        f"SELECT id, text, valid_from FROM facts WHERE id IN {id_list(list(close))}"
        f" AND {CURRENT} AND agent_id IS NOT DISTINCT FROM ?",
        [agent],
    )
    found = [(int(r[0]), str(r[1]), r[2], close[int(r[0])]) for r in rows]
    return sorted(found, key=lambda c: -c[3])


def decide(
    messages: Sequence[PendingMessage],
    *,
    store: Store,
    index: VectorIndex,
    embedder: Embedder,
    extractor: Extractor,
) -> list[Decision]:
    """Extract and resolve the facts of ``messages`` (grouped by scope, in order)."""
    decisions: list[Decision] = []
    for group in _groups(messages):
        last = group[-1]
        turns = [Turn(m.role, m.content, m.observed_at, m.name) for m in group]
        facts = [f for f in extractor.extract(turns) if f.text.strip()]
        if not facts:
            continue
        vectors = embedder.embed([f.text for f in facts])
        start = len(decisions)
        for fact, vector in zip(facts, vectors, strict=True):
            decisions.append(
                _decide_one(fact, vector, last, decisions[start:], start, store, index,
                            extractor)
            )
    return decisions


def _decide_one(
    fact: ExtractedFact,
    vector: Any,
    message: PendingMessage,
    batch: list[Decision],
    offset: int,
    store: Store,
    index: VectorIndex,
    extractor: Extractor,
) -> Decision:
    decision = Decision(
        text=fact.text.strip(),
        category=fact.category,
        metadata={**message.metadata, **({"about": fact.about} if fact.about != "user" else {})},
        user_id=message.user_id,
        agent_id=message.agent_id,
        run_id=message.run_id,
        valid_from=fact.valid_from or message.observed_at,
        message_id=message.id,
        vector=vector,
    )
    digest = content_hash(decision.text)
    same = store.current_by_hash(message.user_id, message.agent_id, message.run_id, [digest])
    if digest in same:
        decision.duplicate_of = Ref(fact_id=same[digest])
        return decision
    for position, earlier in enumerate(batch):
        if content_hash(earlier.text) == digest:
            decision.duplicate_of = Ref(batch=offset + position)
            return decision

    options: list[tuple[Ref, str, datetime, float]] = [
        (Ref(fact_id=i), text, since, sim)
        for i, text, since, sim in _stored_candidates(store, index, message.user_id,
                                                       message.agent_id, vector)
    ]
    for position, earlier in enumerate(batch):
        sim = float(earlier.vector @ vector)
        if sim >= CANDIDATE_MIN_SIMILARITY and earlier.duplicate_of is None:
            options.append((Ref(batch=offset + position), earlier.text, earlier.valid_from, sim))
    options = sorted(options, key=lambda o: -o[3])[:MAX_CANDIDATES]
    if not options:
        return decision
    candidates = [Candidate(alias, text, since) for alias, (_, text, since, _) in
                  enumerate(options)]
    labels = extractor.resolve(fact, candidates)
    for alias, label in labels.items():
        if not isinstance(alias, int) or not 0 <= alias < len(options):
            log.warning("resolver returned alias %r, which was not offered; ignored", alias)
            continue
        ref = options[alias][0]
        if label == "duplicate" and decision.duplicate_of is None:
            decision.duplicate_of = ref
        elif label == "superseded":
            decision.supersedes.append(ref)
        elif label == "refined":
            decision.refines.append(ref)
    if decision.duplicate_of is not None:
        decision.supersedes.clear()
        decision.refines.clear()
    return decision
