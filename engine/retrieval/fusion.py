"""Signal fusion for hybrid search: how vector, lexical, name, time, recency and
neighbour signals combine into one score, with each signal's contribution kept for
``explain=True``.

The fused score of a candidate fact is a weighted sum::

    score = W.vector  * (cosine, min-max scaled over the candidate set)
          + W.lexical * (BM25 / best BM25 of the query)
          + W.name    * [the fact's speaker is named in the query]
          + W.time    * [a "when" question] * [the fact mentions a time]
          + W.recency * 0.5 ** (age of the fact vs the newest candidate / half-life)
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
from typing import Any

__all__ = [
    "Candidate",
    "FusionWeights",
    "HYBRID",
    "QueryFeatures",
    "fuse",
    "query_features",
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


HYBRID = FusionWeights()


@dataclass(frozen=True)
class QueryFeatures:
    """What the query itself tells the fusion: names it mentions, whether it asks 'when'."""

    words: frozenset[str]
    asks_when: bool


def query_features(query: str) -> QueryFeatures:
    """Case-folded words of the query (to match speaker names) and its 'when'-ness."""
    return QueryFeatures(
        words=frozenset(w.casefold() for w in _NAME_WORD.findall(query)),
        asks_when=bool(_WHEN.search(query)),
    )


@lru_cache(maxsize=65536)
def mentions_time(text: str) -> bool:
    """Whether a fact's text refers to a time ("yesterday", "last May", "2022").

    Cached: the same facts come back as candidates query after query.
    """
    return bool(_TIME_WORDS.search(text))


@lru_cache(maxsize=4096)
def _first_name(value: str) -> str | None:
    parts = _NAME_WORD.findall(value)
    return parts[0].casefold() if parts else None


def named_speakers(metadata: Mapping[str, Any], query: QueryFeatures) -> list[str]:
    """Speaker/name metadata values of a fact that the query names (a first name is enough)."""
    found = []
    for key in NAME_KEYS:
        value = metadata.get(key)
        if isinstance(value, str) and _first_name(value) in query.words:
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
    base: float = 0.0
    score: float = 0.0
    parts: dict[str, Any] = field(default_factory=dict)


def _scale(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    return low, (high - low) if high > low else 1.0


def fuse(
    candidates: Iterable[Candidate],
    query: QueryFeatures,
    weights: FusionWeights = HYBRID,
    *,
    explain: bool = True,
) -> list[Candidate]:
    """Score candidates in place and return them best first (ties: lower id first).

    Scaling statistics come from the retrieved candidates only; a fact that entered
    only as a neighbour gets no vector part (its cosine was never retrieved, exactly
    as in tuning) but keeps its BM25 and other signals. ``explain=False`` skips
    building the per-signal ``parts`` dicts (they cost more than the arithmetic).
    """
    pool = list(candidates)
    if not pool:
        return []
    retrieved = [c for c in pool if c.expanded_from is None] or pool
    sim_low, sim_span = _scale([c.similarity for c in retrieved])
    bm25_top = max((c.bm25 for c in retrieved), default=0.0) or 1.0
    newest = max(c.valid_from for c in retrieved)
    half_life_s = max(weights.recency_half_life_days, 1e-6) * 86400.0
    asks_when = query.asks_when and weights.time > 0
    for c in pool:
        vector = 0.0
        if c.expanded_from is None:
            vector = weights.vector * max(0.0, (c.similarity - sim_low) / sim_span)
        lexical = weights.lexical * min(1.0, c.bm25 / bm25_top)
        names = named_speakers(c.metadata, query) if weights.name and c.metadata else []
        name = weights.name if names else 0.0
        timely = asks_when and mentions_time(c.text)
        time = weights.time if timely else 0.0
        age_s = max(0.0, (newest - c.valid_from).total_seconds())
        recency = weights.recency * math.pow(0.5, age_s / half_life_s) if weights.recency else 0.0
        c.base = vector + lexical + name + time + recency
        if explain:
            c.parts = {
                "vector": {"similarity": c.similarity, "rank": c.vector_rank,
                           "contribution": vector},
                "lexical": {"bm25": c.bm25, "rank": c.lexical_rank, "contribution": lexical},
                "name": {"matched": names, "contribution": name},
                "time": {"asks_when": query.asks_when, "mentions_time": bool(timely),
                         "contribution": time},
                "recency": {"age_days": age_s / 86400.0, "contribution": recency},
            }
    by_id = {c.fact_id: c for c in pool}
    for c in pool:
        best_id, best = None, 0.0
        for other in c.neighbours:
            neighbour = by_id.get(other)
            if neighbour is not None and neighbour.base > best:
                best_id, best = other, neighbour.base
        bonus = weights.neighbour * best
        c.score = c.base + bonus
        if explain:
            c.parts["neighbour"] = {"from": best_id, "contribution": bonus,
                                    "expanded_from": c.expanded_from}
    pool.sort(key=lambda c: (-c.score, c.fact_id))
    return pool
