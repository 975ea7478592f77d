"""The add pipeline with inference: one extract call per turn, then code decides.

It turns stored messages into :class:`~engine.ingest.maintain.Decision` objects and touches no
table: the LM call is slow, so it runs outside any DuckDB transaction, and
:func:`engine.ingest.maintain.apply_decisions` applies the result in one.

For each group of messages (one scope, in order):

1. **Known facts** (only for an extractor that shows them, ``show_known``). The user's
   current facts close to the message (vector neighbours of the message, facts whose value
   the message names, or all of them when there are few) are shown to the extractor, so the
   model reuses their slot names.
2. **Extract** (one LM call): facts with subject, slot and value, from the user's turns
   only; the assistant's (and system or tool) turns are context. A group with no user turn
   is not extracted, a fact whose value or sentence names what only those turns said is dropped
   (:mod:`engine.extract.grounding`), and facts are credited to the last user message.
3. **Decide, in code** (:mod:`engine.extract.slots`): the same text as a current fact, or
   the same subject, slot and value: a duplicate (provenance only); the same subject and a
   single-valued slot with another value: the old fact is superseded (``valid_to`` = the new
   ``valid_from``), or corrected when the new fact names no date of its own and the old
   one was said within ``CORRECTION_WINDOW`` before, or within ``NAMED_CORRECTION_WINDOW``
   when the message names what set the old value apart ("the 7 was my old one": the old
   one was a slip, never true); a multi-valued slot: a new value is added beside the
   others, and news about a value already there ("Rex" -> "Rex (died)") supersedes it; a
   value naming the same thing as a current one with other numbers ("Postgres 14" ->
   "Postgres 17") is its new version whatever slot names the model chose; a
   single-valued fact that names a value of a catch-all slot ("green tea over coffee"
   after coffee filed under hobbies) supersedes that value; one message naming the same
   slot and value twice gives one fact. Late news about an older period never
   overwrites a newer fact: :mod:`engine.ingest.maintain` stores it as a closed
   historical version, and a fact about a period the message says has ended ("until
   2014") is history from the start: it changes no current fact.

No English word list decides anything here, so a change said in any language, or with no
cue word at all ("we got the keys to our flat in Porto"), is read the same way.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from engine.extract import ExtractedFact, Extractor, KnownFact, Turn
from engine.extract.grounding import borrowed, context_said, user_said
from engine.extract.salience import worth_extracting
from engine.extract.slots import (
    is_multi_valued,
    names_in,
    normalise_attribute,
    normalise_subject,
    normalise_value,
    same_item,
    same_subject,
    specifics,
)
from engine.ingest.maintain import Decision, Ref
from engine.storage.records import fact_from_row
from engine.storage.store import CURRENT, FACT_COLUMNS, Store, content_hash, id_list
from engine.timeutil import to_storage
from engine.types import Fact

if TYPE_CHECKING:
    from engine.backends.embed import Embedder
    from engine.retrieval.index import VectorIndex

__all__ = [
    "CORRECTION_WINDOW",
    "KNOWN_MAX",
    "PARAPHRASE_MIN_SIMILARITY",
    "PendingMessage",
    "decide",
]

log = logging.getLogger(__name__)

KNOWN_MAX = 8
"""At most this many known facts are shown to the extractor per call."""
KNOWN_MIN_SIMILARITY = 0.25
"""Cosine similarity (MiniLM) between the message and a stored fact for it to be shown."""
PARAPHRASE_MIN_SIMILARITY = 0.92
"""Cosine similarity above which a new fact with no slot match is a duplicate of a current
fact (a paraphrase: "User lives in Porto" and "User is living in Porto")."""
SAME_THING_MIN_SIMILARITY = 0.68
"""Cosine similarity above which a fact with an unmatched slot name replaces a current
single-valued fact of the same subject (see ``_same_thing``)."""
GENERIC_SLOTS = frozenset({"likes", "dislikes", "hobbies", "daily routine"})
"""Slots a small model uses for any preference or habit (see ``_named_preference``)."""
CORRECTION_WINDOW = timedelta(days=1)
"""A contradiction of a fact said this recently, naming no date of its own, corrects it."""
NAMED_CORRECTION_WINDOW = timedelta(days=7)
"""A contradiction this recent that names the old value ("Porto, not Lisbon"; "the 7 was
my old one") corrects it too: a user who repeats what was wrong is correcting it."""


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


@dataclass(frozen=True)
class _Stored:
    """A current fact of the user, as the rules compare it."""

    id: int
    text: str
    subject: str | None
    slot: str | None
    value: str | None
    valid_from: datetime


def _groups(messages: Sequence[PendingMessage]) -> list[list[PendingMessage]]:
    groups: dict[tuple[str, str | None, str | None], list[PendingMessage]] = {}
    for message in messages:
        groups.setdefault((message.user_id, message.agent_id, message.run_id), []).append(message)
    return list(groups.values())


def _stored(fact: Fact) -> _Stored:
    """The rules' view of a stored fact (times naive UTC, as messages carry them)."""
    return _Stored(fact.id, fact.text, fact.subject, fact.slot, fact.value,
                   to_storage(fact.valid_from, name="valid_from"))


def _rows(store: Store, where: str, params: list[Any]) -> list[_Stored]:
    rows = store.query(f"SELECT {FACT_COLUMNS} FROM facts WHERE {CURRENT}"
                       f" AND user_id = ? AND agent_id IS NOT DISTINCT FROM ? AND {where}"
                       " ORDER BY valid_from, id", params)
    return [_stored(fact_from_row(row)) for row in rows]


def _known_facts(store: Store, index: VectorIndex, embedder: Embedder,
                 message: PendingMessage, text: str) -> list[_Stored]:
    """The stored facts shown to the extractor for ``text`` (see module doc)."""
    scope = [message.user_id, message.agent_id]
    everything = _rows(store, "true", scope)
    if len(everything) <= KNOWN_MAX:
        return everything
    (vector,) = embedder.embed([text])
    ids, sims = index.search(message.user_id, vector, 3 * KNOWN_MAX)
    close = [i for i, s in zip(ids, sims, strict=True) if s >= KNOWN_MIN_SIMILARITY]
    named = _rows(store, "value IS NOT NULL AND length(value) >= 3"
                  " AND contains(lower(?), lower(value))", [*scope, text])
    by_id = {f.id: f for f in everything}
    chosen: list[_Stored] = [f for f in named if f.id in by_id][: KNOWN_MAX // 2]
    for fact_id in close:
        if len(chosen) >= KNOWN_MAX:
            break
        if fact_id in by_id and by_id[fact_id] not in chosen:
            chosen.append(by_id[fact_id])
    return chosen


def decide(
    messages: Sequence[PendingMessage],
    *,
    store: Store,
    index: VectorIndex,
    embedder: Embedder,
    extractor: Extractor,
) -> list[Decision]:
    """Extract the facts of ``messages`` (grouped by scope, in order) and decide, in code,
    what each one changes."""
    decisions: list[Decision] = []
    for group in _groups(messages):
        turns = [Turn(m.role, m.content, m.observed_at, m.name) for m in group]
        spoken = [m for m, t in zip(group, turns, strict=True) if t.from_user]
        if not spoken:
            continue  # the assistant's words alone are no source of facts
        last = spoken[-1]  # facts are credited to (and dated from) what the user said
        stored: list[_Stored] = []
        if extractor.show_known and worth_extracting(turns):
            stored = _known_facts(store, index, embedder, last,
                                  " ".join(m.content for m in spoken))
        known = [KnownFact(f.text, f.subject, f.slot, f.value, f.valid_from) for f in stored]
        facts = [f for f in extractor.extract(turns, known) if f.text.strip()]
        said, context = user_said(turns), context_said(turns)
        theirs = [f for f in facts if borrowed(f, said, context)]
        for dropped in theirs:
            log.info("dropped %r: its value %r is the assistant's words, not the user's",
                     dropped.text, dropped.value)
        facts = [f for f in facts if f not in theirs]
        if not facts:
            continue
        slotted = [_stored(f) for f in store.current_slotted(last.user_id, last.agent_id)]
        facts = _named_for_someone_else(facts, slotted)
        if not facts:
            continue
        vectors = embedder.embed([f.text for f in facts])
        start = len(decisions)
        for fact, vector in zip(facts, vectors, strict=True):
            decisions.append(_decide_one(fact, vector, slotted, last, decisions[start:],
                                         start, store, index))
    return decisions


def _named_for_someone_else(facts: list[ExtractedFact],
                             slotted: list[_Stored]) -> list[ExtractedFact]:
    """The facts of one message, less a "name" the model gave the user that is the name
    of a person the user talks about ("User's name is Hugo" from "Hugo is 11 now", with
    "son Hugo" known): a small model reads a sentence about someone by name as being
    about the speaker. The message's other facts about "the user" are then about that
    person, and are given to them ("User is 11 years old" -> "User's son Hugo is 11 years
    old"), when exactly one person has the name."""
    people = {normalise_subject(f.about) for f in facts} | {s.subject or "user" for s in slotted}
    people.discard("user")
    kept: list[ExtractedFact] = []
    someone: set[str] = set()
    for fact in facts:
        named = [p for p in people if names_in(p) & names_in(fact.value or "")]
        if (normalise_attribute(fact.slot or "") == "name" and named
                and normalise_subject(fact.about) == "user"):
            log.info("dropped %r: %r is %s, not the user", fact.text, fact.value, named[0])
            someone.update(named)
            continue
        kept.append(fact)
    if len(someone) != 1:
        return kept
    (person,) = someone
    return [_about(fact, person) if normalise_subject(fact.about) == "user" else fact
            for fact in kept]


def _about(fact: ExtractedFact, person: str) -> ExtractedFact:
    """``fact`` (written about "User") given to ``person``, its sentence saying so."""
    text = fact.text.strip()
    for prefix, own in (("User's ", "'s"), ("User ", "")):
        if text.startswith(prefix):
            text = f"User's {person}{own} {text.removeprefix(prefix)}"
            break
    return replace(fact, text=text, about=person)


_NUMBER = re.compile(r"\d+(?:[.,:/]\d+)*")


def _specifics(text: str) -> set[str]:
    """The numbers and capitalised words of a fact after its first word ("User")."""
    return set(specifics(text.partition(" ")[2]))


def _is_count(value: str | None) -> bool:
    """Whether a value starts with a number ("3", "3 kids"): a count, one at a time."""
    words = normalise_value(value or "").split()
    return bool(words) and bool(_NUMBER.fullmatch(words[0]))


def _corrects(target: _Stored, fact: ExtractedFact, message: PendingMessage) -> bool:
    """Whether ``fact`` corrects ``target`` rather than changing it: it names no date of its
    own and contradicts a fact said within ``CORRECTION_WINDOW``, or within
    ``NAMED_CORRECTION_WINDOW`` when the message names the old value again."""
    if fact.valid_from is not None:
        return False
    gap = message.observed_at - target.valid_from
    if gap < timedelta(0) or gap > NAMED_CORRECTION_WINDOW:
        return False
    return gap <= CORRECTION_WINDOW or _names_old_value(target.value or "", fact.value or "",
                                                       message.content)


def _names_old_value(old: str, new: str, said: str) -> bool:
    """Whether the message ``said`` names what set the ``old`` value apart from the ``new``
    one: a name or number of the old value that the new one lacks ("the 7 was my old one"
    for "Pixel 7" -> "Pixel 8") or, for a value without any, all of its words."""
    words = set(normalise_value(said).split())
    kept = set(normalise_value(new).split())
    marks = [set(normalise_value(m).split()) for m in specifics(old)]
    marks = [m for m in marks if m and not m <= kept]
    if marks:
        return any(mark <= words for mark in marks)
    wanted = set(normalise_value(old).split()) - kept
    return bool(wanted) and wanted <= words


def _decide_one(
    fact: ExtractedFact,
    vector: Any,
    slotted: list[_Stored],
    message: PendingMessage,
    batch: list[Decision],
    offset: int,
    store: Store,
    index: VectorIndex,
) -> Decision:
    slot = normalise_attribute(fact.slot) if fact.slot else None
    subject = normalise_subject(fact.about)
    decision = Decision(
        text=fact.text.strip(),
        category=fact.category,
        metadata={**message.metadata, **({"about": subject} if subject != "user" else {})},
        user_id=message.user_id,
        agent_id=message.agent_id,
        run_id=message.run_id,
        valid_from=fact.valid_from or message.observed_at,
        message_id=message.id,
        vector=vector,
        subject=subject,
        slot=slot,
        value=fact.value,
        valid_to=fact.valid_to,
    )
    digest = content_hash(decision.text)
    same = store.current_by_hash(message.user_id, message.agent_id, message.run_id, [digest])
    if digest in same:
        decision.duplicate_of = Ref(fact_id=same[digest])
        return decision
    if fact.valid_to is not None:
        return decision  # a period that has ended is history: it changes no current fact
    # what this fact is compared with: the stored current facts, then this batch's
    peers: list[tuple[Ref, _Stored]] = [(Ref(fact_id=s.id), s) for s in slotted]
    together: list[tuple[Ref, _Stored]] = []  # this message's earlier facts
    for position, earlier in enumerate(batch):
        ref = Ref(batch=offset + position)
        if content_hash(earlier.text) == digest:
            decision.duplicate_of = ref
            return decision
        if earlier.duplicate_of is None and earlier.slot is not None:
            entry = (ref, _Stored(-1, earlier.text, earlier.subject, earlier.slot,
                                  earlier.value, earlier.valid_from))
            # facts of the same message never replace each other (they were said
            # together), but the same slot and value twice is one fact
            (together if earlier.message_id == message.id else peers).append(entry)

    def close(ref: Ref, old: _Stored) -> None:
        if ref in decision.supersedes or ref in decision.corrects:
            return
        (decision.corrects if _corrects(old, fact, message) else decision.supersedes).append(ref)

    if slot:
        def in_slot(group: list[tuple[Ref, _Stored]]) -> list[tuple[Ref, _Stored]]:
            return [(ref, s) for ref, s in group
                    if s.slot == slot and same_subject(s.subject or "user", subject)]

        same_slot = in_slot(peers)
        value = normalise_value(fact.value or "")
        for ref, s in same_slot + in_slot(together):
            if value and normalise_value(s.value or "") == value:
                decision.duplicate_of = ref
                return decision
        many = is_multi_valued(slot)
        for ref, s in same_slot:
            if not many or (value and same_item(s.value or "", fact.value or "")) \
                    or (_is_count(s.value) and _is_count(fact.value)):
                close(ref, s)
        _new_version(decision, peers, subject, close)
        if not same_slot:
            _same_thing(decision, peers, subject, close, store)
        if not many:
            _named_preference(decision, peers, subject, close)
    if not decision.supersedes and not decision.corrects:
        _paraphrase(decision, store, index, message)
    return decision


def _version_of(value: str) -> tuple[frozenset[str], tuple[str, ...]] | None:
    """The names and the numbers of a value ("Postgres 14": ({"postgres"}, ("14",))), or
    None when it lacks either."""
    marks = specifics(value)
    names = frozenset(m.casefold() for m in marks if not m[0].isdigit())
    numbers = tuple(m for m in marks if m[0].isdigit())
    return (names, numbers) if names and numbers else None


def _new_version(decision: Decision, peers: list[tuple[Ref, _Stored]], subject: str,
                 close: Any) -> None:
    """A value naming the same thing as a current value of the subject, with other numbers
    ("Postgres 14" -> "Postgres 17", "Pixel 7" -> "Pixel 8"), is a new version of it,
    whatever slot names the model gave the two; values of multi-valued slots (two races
    of the same name) both stay."""
    mine = _version_of(decision.value or "")
    if mine is None:
        return
    for ref, stored in peers:
        if not same_subject(stored.subject or "user", subject) or (
                is_multi_valued(stored.slot or "") and is_multi_valued(decision.slot or "")):
            continue
        theirs = _version_of(stored.value or "")
        if theirs is not None and theirs[0] == mine[0] and theirs[1] != mine[1]:
            close(ref, stored)


def _same_thing(decision: Decision, peers: list[tuple[Ref, _Stored]], subject: str,
                close: Any, store: Store) -> None:
    """A fact whose slot name matches nothing of its subject's may still be about a
    single-valued slot the model named differently this time ("sleep duration" for
    "bedtime"): when its sentence is as close as ``SAME_THING_MIN_SIMILARITY`` to such a
    current fact of the same subject, with other specifics, it replaces that fact."""
    if not peers or decision.vector is None:
        return
    import numpy as np

    candidates = {s.id: (ref, s) for ref, s in peers if s.slot and s.id >= 0
                  and not is_multi_valued(s.slot) and same_subject(s.subject or "user", subject)}
    if not candidates:
        return
    ids, vectors = store.embeddings_for(list(candidates))
    if not ids:
        return
    sims = vectors @ np.asarray(decision.vector, dtype=np.float32)
    best = int(np.argmax(sims))
    ref, stored = candidates[ids[best]]
    if float(sims[best]) >= SAME_THING_MIN_SIMILARITY and \
            _specifics(stored.text) != _specifics(decision.text):
        close(ref, stored)


def _named_preference(decision: Decision, peers: list[tuple[Ref, _Stored]], subject: str,
                      close: Any) -> None:
    """A single-valued fact that names what a value held in one of the subject's catch-all
    slots is about (``GENERIC_SLOTS``; its first word: a small model files "loves coffee in
    the morning" under hobbies or daily routine, value "coffee in the morning") replaces
    it: "User prefers green tea over coffee" ends "User loves coffee in the morning"."""
    said = set(normalise_value(decision.text).split())
    for ref, stored in peers:
        if stored.slot in GENERIC_SLOTS and stored.slot != decision.slot and \
                same_subject(stored.subject or "user", subject):
            words = normalise_value(stored.value or "").split()
            if words and words[0] in said and stored.value != decision.value:
                close(ref, stored)


def _paraphrase(decision: Decision, store: Store, index: VectorIndex,
                message: PendingMessage) -> None:
    """Mark ``decision`` a duplicate of a current fact it merely rephrases (close in
    meaning, and the same names and numbers: "User has 3 kids" is no paraphrase of "User
    has 2 kids", however close their vectors)."""
    ids, sims = index.search(message.user_id, decision.vector, 3)
    close = [i for i, s in zip(ids, sims, strict=True) if s >= PARAPHRASE_MIN_SIMILARITY]
    if not close:
        return
    rows = store.query(f"SELECT id, text FROM facts WHERE id IN {id_list(close)} AND {CURRENT}"
                       " AND agent_id IS NOT DISTINCT FROM ? ORDER BY id", [message.agent_id])
    mine = _specifics(decision.text)
    for fact_id, text in rows:
        if _specifics(str(text)) == mine:
            decision.duplicate_of = Ref(fact_id=int(fact_id))
            return
