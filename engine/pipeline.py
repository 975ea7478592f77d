"""The add pipeline with inference: extract, find candidates, resolve, decide.

It turns stored messages into :class:`~engine.maintain.Decision` objects and
touches no table: the LM calls here are slow, so they run outside any DuckDB
transaction, and :func:`engine.maintain.apply_decisions` applies the result in
one. Candidates for a new fact are the user's current facts in the same agent
scope whose cosine similarity clears ``CANDIDATE_MIN_SIMILARITY`` (plus facts
decided earlier in the same batch), shown to the LM as aliases 0..n-1. Facts
without candidates skip the resolve call entirely.

When the messages themselves say what ended ("I've stopped drinking coffee"), code reads
it (:func:`engine.extract.salience.ended_states`, English cues; the extractor's own
``replaces`` is used where such a cue backs it up). Current facts whose cosine
similarity to an ended state clears ``REPLACES_MIN_SIMILARITY`` are superseded by the
new fact closest to it, with no resolve call, and a new fact that merely restates the
ended state ("User drinks coffee", a small model misreading the message) is dropped:
the user's own words are stronger evidence than a small model's label.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.extract import Candidate, ExtractedFact, Extractor, Turn
from engine.extract.salience import ended_states
from engine.maintain import Decision, Ref
from engine.store import CURRENT, Store, content_hash, id_list

if TYPE_CHECKING:
    from engine.embed import Embedder
    from engine.index import VectorIndex

__all__ = [
    "CANDIDATE_MIN_SIMILARITY",
    "MAX_CANDIDATES",
    "REPLACES_MIN_SIMILARITY",
    "RESTATES_MIN_SIMILARITY",
    "PendingMessage",
    "decide",
]

log = logging.getLogger(__name__)

CANDIDATE_MIN_SIMILARITY = 0.5
"""Cosine similarity (MiniLM) above which a stored fact may be the same topic."""
MAX_CANDIDATES = 5
REPLACES_MIN_SIMILARITY = 0.65
"""Cosine similarity between a fact's ``replaces`` text and a stored fact that makes the
stored fact the one the user said has ended (calibrated on MiniLM: "User drinks coffee"
vs "User really loves coffee in the morning" 0.77; vs unrelated facts of the same user
at most 0.33)."""
RESTATES_MIN_SIMILARITY = 0.75
"""Cosine similarity above which a new fact without a word of change restates an ended
state (and is dropped)."""
BACKED_MIN_SIMILARITY = 0.5
"""Cosine similarity between the extractor's ``replaces`` and a cue read by code above
which the extractor's wording is used too."""

_CHANGE_WORDS = re.compile(r"\b(?:stopped|quit|no longer|not|never|instead|switched|used to"
                           r"|any ?more|gave up|former(?:ly)?|previously|ex)\b|n't\b",
                           re.IGNORECASE)


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
    store: Store, index: VectorIndex, user: str, agent: str | None, vector: Any,
    min_similarity: float = CANDIDATE_MIN_SIMILARITY,
) -> list[tuple[int, str, datetime, float]]:
    ids, sims = index.search(user, vector, 4 * MAX_CANDIDATES)
    close = {i: s for i, s in zip(ids, sims, strict=True) if s >= min_similarity}
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
        facts, vectors, ended = _with_ended_states(facts, ended_states(turns), embedder)
        start = len(decisions)
        for fact, vector, ended_vectors in zip(facts, vectors, ended, strict=True):
            decisions.append(
                _decide_one(fact, vector, ended_vectors, last, decisions[start:], start,
                            store, index, extractor)
            )
    return decisions


def _with_ended_states(
    facts: list[ExtractedFact], cues: list[str], embedder: Embedder
) -> tuple[list[ExtractedFact], list[Any], list[list[Any]]]:
    """The facts to keep, their vectors, and per fact the ended states it supersedes.

    Each cue goes to the kept fact whose own ``replaces`` matches it, else to the kept
    fact closest to it (facts that describe the change itself only when there is no
    other); facts that restate a cue without a word of change are dropped, and so are
    facts that describe the change when another fact states the new situation.
    """
    texts = [f.text for f in facts]
    offered = [f.replaces or "" for f in facts]
    if not cues:
        return facts, list(embedder.embed(texts)), [[] for _ in facts]
    vectors = embedder.embed(texts + cues + [r for r in offered if r])
    fact_vectors = vectors[: len(facts)]
    cue_vectors = vectors[len(facts): len(facts) + len(cues)]
    replaces = iter(vectors[len(facts) + len(cues):])
    replaces_vectors = [next(replaces) if r else None for r in offered]
    keep = [i for i, text in enumerate(texts)
            if _CHANGE_WORDS.search(text)
            or max(float(fact_vectors[i] @ c) for c in cue_vectors) < RESTATES_MIN_SIMILARITY]
    for i in set(range(len(facts))) - set(keep):
        log.info("dropped %r: it restates what the message says has ended", texts[i])
    ended: dict[int, list[Any]] = {i: [] for i in keep}
    if not keep:
        return [], [], []
    for cue, cue_vector in zip(cues, cue_vectors, strict=True):
        backed = [i for i in keep if replaces_vectors[i] is not None
                  and float(replaces_vectors[i] @ cue_vector) >= BACKED_MIN_SIMILARITY]
        # the new state succeeds the ended one: prefer facts that are not themselves
        # about the change ("User stopped drinking coffee")
        states = [i for i in keep if not _CHANGE_WORDS.search(texts[i])] or keep
        owner = next((i for i in backed if i in states), None)
        if owner is None:
            owner = max(states, key=lambda i: float(fact_vectors[i] @ cue_vector))
        ended[owner].append(cue_vector)
        ended[owner].extend(replaces_vectors[i] for i in backed)
        log.debug("ended state %r goes with %r", cue, texts[owner])
        # "User stopped drinking coffee" beside "User prefers green tea": the change is
        # recorded once, as the supersession, not as a second current fact
        for i in list(keep):
            if i != owner and _CHANGE_WORDS.search(texts[i]) \
                    and float(fact_vectors[i] @ cue_vector) >= RESTATES_MIN_SIMILARITY:
                log.info("dropped %r: the change is kept as %r superseding", texts[i],
                         texts[owner])
                keep.remove(i)
    return ([facts[i] for i in keep], [fact_vectors[i] for i in keep],
            [ended[i] for i in keep])


def _ended_by_user(
    ended_vector: Any, message: PendingMessage, batch: list[Decision], offset: int,
    store: Store, index: VectorIndex,
) -> list[Ref]:
    """The current facts (stored, or earlier in this batch) the user said have ended."""
    refs = [Ref(fact_id=i) for i, *_ in _stored_candidates(
        store, index, message.user_id, message.agent_id, ended_vector,
        REPLACES_MIN_SIMILARITY)]
    refs += [Ref(batch=offset + position) for position, earlier in enumerate(batch)
             if earlier.duplicate_of is None
             and float(earlier.vector @ ended_vector) >= REPLACES_MIN_SIMILARITY]
    return refs


def _decide_one(
    fact: ExtractedFact,
    vector: Any,
    ended_vectors: list[Any],
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

    for ended_vector in ended_vectors:
        for ref in _ended_by_user(ended_vector, message, batch, offset, store, index):
            if ref not in decision.supersedes:
                decision.supersedes.append(ref)
    settled = set(decision.supersedes)
    options: list[tuple[Ref, str, datetime, float]] = [
        (Ref(fact_id=i), text, since, sim)
        for i, text, since, sim in _stored_candidates(store, index, message.user_id,
                                                       message.agent_id, vector)
        if Ref(fact_id=i) not in settled
    ]
    for position, earlier in enumerate(batch):
        sim = float(earlier.vector @ vector)
        ref = Ref(batch=offset + position)
        if sim >= CANDIDATE_MIN_SIMILARITY and earlier.duplicate_of is None \
                and ref not in settled:
            options.append((ref, earlier.text, earlier.valid_from, sim))
    options = sorted(options, key=lambda o: -o[3])[:MAX_CANDIDATES]
    if not options:
        return decision
    candidates = [Candidate(alias, text, since, sim) for alias, (_, text, since, sim) in
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
