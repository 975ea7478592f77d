"""Signal fusion for hybrid search: how vector, lexical, name, time, recency and
neighbour signals combine into one score, with each signal's contribution kept for
``explain=True``.

The fused score of a candidate fact is a weighted sum::

    score = W.vector  * (cosine, min-max scaled over the candidate set)
          + W.lexical * (BM25 / best BM25 of the query)
          + W.name    * [the fact's speaker is named in the query]
          + W.time    * [a "when" question] * [the fact mentions a time]
          + W.recency * 0.5 ** (age of the fact vs the newest candidate / half-life)
          + W.slot    * [the fact's slot is one the query asks about ("where ... work" -> job),
                         about the person the query asks about]
    then  + W.neighbour * (best base score of the turn just before or after it)

A fact that entered the pool only as a neighbour (the turn before or after a
retrieved one: same observation time, adjacent source message) has no vector part,
as in tuning: LoCoMo answers often sit in the reply to the turn that matches.

Validity is a gate, not a weight: only facts valid at the searched time (current
facts, or those true at ``as_of``) are candidates at all.

Why a weighted sum of scaled scores and not reciprocal-rank fusion: RRF throws
away how *much* better the best match is. On LoCoMo (raw turns), naive RRF of BM25
and MiniLM scored *below* BM25 alone (0.57 vs 0.61 recall@10), while scaled scores
keep BM25's confident exact-word hits on top and let vectors rescue paraphrases.

How the constants were tuned: grid search on the LoCoMo dev conversations conv-26,
conv-30 and conv-41 (tuning split) for recall@10, checked on conv-42 and conv-43
(held out); see ``benchmarks/locomo.py`` and its results. Grid: vector 0.7/1.0/1.5,
name 0/0.1/0.2/0.3, time 0/0.1/0.2/0.3, neighbour 0.1-0.4 (additive) or 0.6-0.85
(max-style), BM25 k1 0.9-2.0 and b 0.3-0.75. Recency does not help LoCoMo (its
questions are about the whole history), so it only breaks near-ties.

The slot weight was set later, on the update scenarios' train split
(``benchmarks/scenarios.py``, replayed without the LM by ``python -m benchmarks.scenarios
replay``): a small weight let a fact that merely shares the question's words ("User is
vegetarian" for "what does the user drink?") beat the fact filed under the asked slot
("User switches to rooibos"), so it is large enough to decide among the user's current
facts. It goes only to facts about whom the question asks (:func:`about_asked`), and facts
without a slot (raw turns, LoCoMo) never get it, so the LoCoMo tuning above stands.

Result (recall@10, raw turns, MiniLM): tuning split 0.75, held-out 0.71, all 0.73,
against BM25 0.61 and vectors 0.51 overall, with every category above BM25 alone
(``benchmarks/results/locomo.json``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from engine.timeutil import micros

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "Candidate",
    "FusionWeights",
    "HYBRID",
    "QueryFeatures",
    "Scored",
    "Signals",
    "fuse",
    "query_features",
    "score",
    "signals_of",
]

# Metadata keys whose string values name the person a fact came from.
NAME_KEYS = ("speaker", "name", "author")

_WHEN = re.compile(
    r"^\s*(when|what (?:date|day|time|year|month|week)|which (?:date|day|year|month|week)"
    r"|how long ago|since when)\b|\bwhen\b",
    re.IGNORECASE,
)
_MONTHS = (
    "january|february|march|april|may|june|july|august|september|october|november|december"
    "|jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec"
)
_TIME_WORDS = re.compile(
    r"\b(yesterday|today|tonight|tomorrow|last|next|ago|weeks?|weekend|months?|years?|since"
    r"|recently|monday|tuesday|wednesday|thursday|friday|saturday|sunday"
    rf"|{_MONTHS}|(?:19|20)\d\d)\b",
    re.IGNORECASE,
)
_NAME_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


@dataclass(frozen=True)
class FusionWeights:
    """Weights of each signal (see the module docstring for how they were tuned)."""

    vector: float = 1.0
    lexical: float = 1.0
    name: float = 0.1
    time: float = 0.3
    recency: float = 0.01
    recency_half_life_days: float = 180.0
    neighbour: float = 0.3
    slot: float = 1.5


HYBRID = FusionWeights()


@dataclass(frozen=True)
class QueryFeatures:
    """What the query itself tells the fusion: names it mentions, whether it asks 'when',
    which slots it asks about."""

    words: frozenset[str]
    asks_when: bool
    slots: frozenset[str] = frozenset()


def query_features(query: str) -> QueryFeatures:
    """Case-folded words of the query (to match speaker names), its 'when'-ness and the
    slots it names (:func:`engine.extract.slots.slots_asked`)."""
    from engine.extract.slots import slots_asked

    return QueryFeatures(
        words=frozenset(w.casefold() for w in _NAME_WORD.findall(query)),
        asks_when=bool(_WHEN.search(query)),
        slots=slots_asked(query),
    )


@lru_cache(maxsize=65536)
def mentions_time(text: str) -> bool:
    """Whether a fact's text refers to a time ("yesterday", "last May", "2022").

    Cached: the same facts come back as candidates query after query.
    """
    return bool(_TIME_WORDS.search(text))


@lru_cache(maxsize=4096)
def first_name(value: str) -> str | None:
    """The case-folded first word of a name ("Anna Novak" -> "anna"), None if it has none."""
    parts = _NAME_WORD.findall(value)
    return parts[0].casefold() if parts else None


def named_speakers(metadata: Mapping[str, Any], query: QueryFeatures) -> list[str]:
    """Speaker/name metadata values of a fact that the query names (a first name is enough)."""
    found = []
    for key in NAME_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and first_name(value) in query.words:
            found.append(value)
    return found


@dataclass
class Candidate:
    """One candidate fact with its raw signals; ``score`` and ``parts`` are filled by fuse."""

    fact_id: int
    text: str
    metadata: Mapping[str, Any]
    valid_from: datetime
    similarity: float
    bm25: float
    vector_rank: int | None = None
    lexical_rank: int | None = None
    neighbours: list[int] = field(default_factory=list)
    expanded_from: int | None = None  # set when it entered only as a neighbour
    slot: str | None = None
    subject: str | None = None
    base: float = 0.0
    score: float = 0.0
    parts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Signals:
    """A whole candidate pool as columns, so the fusion scores it in a few numpy passes.

    Row ``i`` is one candidate: ``ids`` its fact id, ``similarity`` its cosine, ``bm25``
    its BM25 score, ``valid_from_us`` its valid-from time in integer microseconds (exact
    age arithmetic), ``expanded`` whether it entered only as a neighbour, ``named``,
    ``timely`` and ``slotted`` the name, time and slot signals, and ``neighbours`` an
    ``(n, 2)`` matrix of the rows of its neighbouring turns (-1: none).
    """

    ids: np.ndarray
    similarity: np.ndarray
    bm25: np.ndarray
    valid_from_us: np.ndarray
    expanded: np.ndarray
    named: np.ndarray
    timely: np.ndarray
    neighbours: np.ndarray
    slotted: np.ndarray


@dataclass
class Scored:
    """What :func:`score` computed for each row of a :class:`Signals` pool."""

    vector: np.ndarray
    lexical: np.ndarray
    name: np.ndarray
    time: np.ndarray
    recency: np.ndarray
    slot: np.ndarray
    age_s: np.ndarray
    base: np.ndarray
    bonus: np.ndarray
    score: np.ndarray
    best_neighbour: np.ndarray
    """The row of the neighbour whose base gave the bonus (-1: none)."""
    order: np.ndarray
    """Rows best first (ties: lower fact id first)."""

    def parts(self, row: int, signals: Signals, query: QueryFeatures,
              candidate: Candidate) -> dict[str, Any]:
        """The per-signal explanation of one row (what ``explain=True`` shows)."""
        best = int(self.best_neighbour[row])
        return {
            "vector": {"similarity": candidate.similarity, "rank": candidate.vector_rank,
                       "contribution": float(self.vector[row])},
            "lexical": {"bm25": candidate.bm25, "rank": candidate.lexical_rank,
                        "contribution": float(self.lexical[row])},
            "name": {"matched": named_speakers(candidate.metadata, query)
                     if bool(signals.named[row]) else [],
                     "contribution": float(self.name[row])},
            "time": {"asks_when": query.asks_when, "mentions_time": bool(signals.timely[row]),
                     "contribution": float(self.time[row])},
            "recency": {"age_days": float(self.age_s[row]) / 86400.0,
                        "contribution": float(self.recency[row])},
            "slot": {"asked": sorted(query.slots), "slot": candidate.slot,
                     "contribution": float(self.slot[row])},
            "neighbour": {"from": None if best < 0 else int(signals.ids[best]),
                          "contribution": float(self.bonus[row]),
                          "expanded_from": candidate.expanded_from},
        }


def score(signals: Signals, weights: FusionWeights = HYBRID) -> Scored:
    """Score a pool at once (see the module docstring for the formula).

    Scaling statistics come from the retrieved rows only; a row that entered only as a
    neighbour gets no vector part (its cosine was never retrieved, exactly as in tuning)
    but keeps its BM25 and other signals.
    """
    import numpy as np

    n = len(signals.ids)
    retrieved = ~signals.expanded if n and not signals.expanded.all() else np.ones(n, bool)
    sims = signals.similarity[retrieved]
    sim_low = float(sims.min()) if n else 0.0
    sim_high = float(sims.max()) if n else 0.0
    sim_span = (sim_high - sim_low) if sim_high > sim_low else 1.0
    bm25_top = (float(signals.bm25[retrieved].max()) if n else 0.0) or 1.0
    newest = int(signals.valid_from_us[retrieved].max()) if n else 0
    half_life_s = max(weights.recency_half_life_days, 1e-6) * 86400.0
    vector = weights.vector * np.maximum(0.0, (signals.similarity - sim_low) / sim_span)
    vector[signals.expanded] = 0.0
    lexical = weights.lexical * np.minimum(1.0, signals.bm25 / bm25_top)
    name = np.where(signals.named, weights.name, 0.0) if weights.name else np.zeros(n)
    timely = signals.timely if weights.time > 0 else np.zeros(n, bool)
    time = np.where(timely, weights.time, 0.0)
    age_s = np.maximum(0, newest - signals.valid_from_us) / 1e6
    if weights.recency:
        # math.pow, not np.power: the same result on every CPU (numpy's SIMD pow differs
        # in the last bit on some), so near-ties rank the same everywhere.
        # Facts stored together share an age: each distinct one is raised once.
        ages, which = np.unique(age_s / half_life_s, return_inverse=True)
        decay = np.asarray([math.pow(0.5, a) for a in ages.tolist()], dtype=np.float64)
        recency = weights.recency * decay[which]
    else:
        recency = np.zeros(n)
    slot = np.where(signals.slotted, weights.slot, 0.0) if weights.slot else np.zeros(n)
    base = vector + lexical + name + time + recency + slot
    padded = np.append(base, 0.0)
    around = padded[signals.neighbours] if n else np.zeros((0, 2))
    first, second = around[:, 0], around[:, 1]
    best = np.maximum(0.0, np.maximum(first, second))
    # the first neighbour listed wins a tie, as a strict ``>`` scan from 0 would
    pick = np.where(first >= second, signals.neighbours[:, 0], signals.neighbours[:, 1])
    best_neighbour = np.where(best > 0.0, pick, -1)
    bonus = weights.neighbour * best
    total = base + bonus
    order = np.lexsort((signals.ids, -total))
    return Scored(vector=vector, lexical=lexical, name=name, time=time, recency=recency,
                  slot=slot, age_s=age_s, base=base, bonus=bonus, score=total,
                  best_neighbour=best_neighbour, order=order)


def signals_of(candidates: Sequence[Candidate], query: QueryFeatures,
               weights: FusionWeights = HYBRID) -> Signals:
    """The columns of a list of candidates (neighbour ids that are not in it are dropped)."""
    import numpy as np

    row_of = {c.fact_id: row for row, c in enumerate(candidates)}
    neighbours = np.full((len(candidates), 2), -1, dtype=np.int64)
    for row, c in enumerate(candidates):
        rows = [row_of[i] for i in c.neighbours if i in row_of][:2]
        neighbours[row, : len(rows)] = rows
    asks_when = query.asks_when and weights.time > 0
    return Signals(
        ids=np.asarray([c.fact_id for c in candidates], dtype=np.int64),
        similarity=np.asarray([c.similarity for c in candidates], dtype=np.float64),
        bm25=np.asarray([c.bm25 for c in candidates], dtype=np.float64),
        valid_from_us=np.asarray([micros(c.valid_from) for c in candidates], dtype=np.int64),
        expanded=np.asarray([c.expanded_from is not None for c in candidates], dtype=bool),
        named=np.asarray([bool(weights.name and c.metadata
                               and named_speakers(c.metadata, query)) for c in candidates],
                         dtype=bool),
        timely=np.asarray([asks_when and mentions_time(c.text) for c in candidates],
                          dtype=bool),
        neighbours=neighbours,
        slotted=about_asked([c.subject for c in candidates], query.words,
                            np.asarray([c.slot in query.slots for c in candidates], dtype=bool)),
    )


def about_asked(subjects: Sequence[str | None], words: frozenset[str],
                slotted: np.ndarray) -> np.ndarray:
    """``slotted`` (facts filed under a slot the query asks about) kept only for facts
    about whom the query asks: the pool's people whose name or relation the query says
    ("the user's sister Lucía", "where does Lucía work?"), or the user when it names
    none of them. Without this, the user's own job would win "where does the user's
    sister work?"."""
    import numpy as np

    if not slotted.any():
        return slotted
    named = np.asarray([bool(s and s != "user" and words.intersection(
        w.casefold() for w in _NAME_WORD.findall(s))) for s in subjects], dtype=bool)
    if named.any():
        return slotted & named
    return slotted & np.asarray([s in (None, "user") for s in subjects], dtype=bool)


def fuse(
    candidates: Iterable[Candidate],
    query: QueryFeatures,
    weights: FusionWeights = HYBRID,
    *,
    explain: bool = True,
) -> list[Candidate]:
    """Score candidates in place and return them best first (ties: lower id first).

    The arithmetic is :func:`score`'s; this is its form for a list of candidate
    objects (the SQL paths). ``explain=False`` skips building the per-signal ``parts``.
    """
    pool = list(candidates)
    if not pool:
        return []
    signals = signals_of(pool, query, weights)
    scored = score(signals, weights)
    for row, c in enumerate(pool):
        c.base = float(scored.base[row])
        c.score = float(scored.score[row])
        if explain:
            c.parts = scored.parts(row, signals, query, c)
    return [pool[row] for row in scored.order.tolist()]
