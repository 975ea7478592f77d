"""Retrieval: find a user's facts relevant to a query.

The default path is *hybrid* (see :mod:`engine.retrieval.fusion` for the scoring):

1. candidates: the hnswlib neighbours of the query vector and the BM25 top hits of
   the per-user lexical index (:mod:`engine.retrieval.lexical`), both over current facts;
2. one DuckDB query fetches them with scope and filters applied in SQL (and checked
   again in code) and computes the exact cosine of every candidate, so a fact found
   only lexically still gets its vector signal (and vice versa for BM25);
3. neighbouring turns (facts from the adjacent source message, same observation
   time) join the pool, so the reply to a matching question can be found;
4. :func:`engine.retrieval.fusion.fuse` scores and explains them.

When scope or filters throw away too many candidates the search falls back to an
exact scan in DuckDB (vectors by ``array_inner_product``, BM25 over the scanned
texts), so a filtered search never misses matches. Point-in-time searches
(``as_of``) take the same exact path over the versions valid at that time, since
both indexes hold current facts only. ``mode="vector"`` and ``mode="lexical"``
run one signal alone (benchmarks compare them).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from engine.errors import InvalidInputError
from engine.retrieval.filters import compile_filters, matches
from engine.retrieval.fusion import (
    HYBRID,
    NAME_KEYS,
    Candidate,
    FusionWeights,
    QueryFeatures,
    Signals,
    about_asked,
    fuse,
    query_features,
    score,
)
from engine.retrieval.lexical import Document, LexicalIndex, LexicalScores
from engine.storage.records import fact_from_row
from engine.storage.store import CURRENT, FACT_COLUMNS, Store
from engine.types import Fact, SearchHit

if TYPE_CHECKING:
    import numpy as np

    from engine.retrieval.index import VectorIndex

__all__ = ["MODES", "SearchRequest", "Searcher", "as_user_query", "valid_at_sql"]


def as_user_query(query: str, user_id: str) -> str:
    """``query`` with the user's own id as a word ("what does Maria drink?" for user
    "maria") written as "User", the way extracted facts name their speaker.

    Every fact searched belongs to that user, so the name carries no information, and
    left in it would rank the one fact that mentions it ("User's name is Maria") first
    for any question about her.
    """
    if not re.fullmatch(r"[^\W\d_]{2,}", user_id):
        return query
    return re.sub(rf"\b{re.escape(user_id)}\b('s)?", lambda m: "User" + (m.group(1) or ""),
                  query, flags=re.IGNORECASE)

MODES = ("hybrid", "vector", "lexical")
# Candidates taken from each retriever before fusion (then neighbours are added). The
# fusion weights were tuned with this depth on LoCoMo; larger pools cost latency.
CANDIDATES = 50
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
LEXICAL_ONLY = FusionWeights(vector=0.0, lexical=1.0, name=0.0, time=0.0, recency=0.0,
                             neighbour=0.0)


def valid_at_sql() -> str:
    """SQL predicate (two ``?`` for the time) for versions true in the world at a time.

    A version counts if its valid interval contains the time and it was either
    never retired or retired only because a newer version superseded it, closing
    its valid time (a deleted fact was retracted and a corrected one, retired with
    its valid time left open, was never true: neither is believed for any time).
    """
    return (
        "valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)"
        " AND (expired_at IS NULL OR (superseded_by IS NOT NULL AND valid_to IS NOT NULL))"
    )


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: query text, scope, filters and options."""

    query: str
    user_id: str
    agent_id: str | None
    run_id: str | None
    k: int
    filters: Mapping[str, Any] | None
    as_of: datetime | None
    explain: bool
    mode: str = "hybrid"
    said: str | None = None
    """The query as the caller wrote it, for matching speaker names (``query`` may have
    the user's own name replaced, see :func:`as_user_query`); None: ``query``."""

    def features(self) -> QueryFeatures:
        """The fusion's view of the query, from the words as the caller wrote them."""
        return query_features(self.said or self.query)


def _time_sql(as_of: datetime | None) -> tuple[str, list[Any]]:
    """The predicate for current facts, or for versions valid at ``as_of``."""
    return (CURRENT, []) if as_of is None else (valid_at_sql(), [as_of, as_of])


def _scope_sql(request: SearchRequest) -> tuple[str, list[Any]]:
    clauses = ["user_id = ?"]
    params: list[Any] = [request.user_id]
    if request.agent_id is not None:
        clauses.append("agent_id = ?")
        params.append(request.agent_id)
    if request.run_id is not None:
        clauses.append("run_id = ?")
        params.append(request.run_id)
    filter_sql, filter_params = compile_filters(request.filters)
    clauses.append(filter_sql)
    return " AND ".join(clauses), params + filter_params


def _ids_sql(ids: Sequence[int]) -> str:
    """An inline SQL list of integer ids.

    Ids and vectors are written into the SQL text rather than bound as list
    parameters: the duckdb client converts a bound list element by element, trying
    to import pandas for each one (about 1,000 failed imports per query with a
    384-float vector, ~100 ms at 2 cores). ``int``/``float`` formatting is injection-safe.
    """
    return "(" + ",".join(str(int(i)) for i in ids) + ")" if ids else "(NULL)"


def _vector_sql(vector: np.ndarray, dim: int) -> str:
    """An inline ``FLOAT[dim]`` literal of the query vector (see :func:`_ids_sql`)."""
    return "[" + ",".join(repr(float(x)) for x in vector.tolist()) + f"]::FLOAT[{dim}]"


def _in_scope(request: SearchRequest, fact: Fact) -> bool:
    """Whether a fact belongs to the request's user, agent and run and passes its filters."""
    return (fact.user_id == request.user_id
            and request.agent_id in (None, fact.agent_id)
            and request.run_id in (None, fact.run_id)
            and (not request.filters or matches(request.filters, _record(fact))))


def _document(fact: Fact) -> Document:
    """A current fact as the lexical index keeps it."""
    names = {k: fact.metadata[k] for k in NAME_KEYS if isinstance(fact.metadata.get(k), str)}
    return Document(fact.id, fact.text, fact.source_message_id, fact.valid_from, names, fact)


def _record(fact: Fact) -> dict[str, Any]:
    return {"category": fact.category, "agent_id": fact.agent_id, "run_id": fact.run_id,
            "metadata": fact.metadata}


class Searcher:
    """Hybrid retrieval over one store, its vector index and its lexical index.

    ``lexical=None`` builds a :class:`~engine.retrieval.lexical.LexicalIndex` over the store;
    ``weights`` overrides the tuned fusion weights (for experiments).
    """

    def __init__(
        self,
        store: Store,
        index: VectorIndex,
        lexical: LexicalIndex | None = None,
        *,
        weights: FusionWeights = HYBRID,
    ) -> None:
        self.store = store
        self.index = index
        self.lexical = lexical or LexicalIndex(
            load_documents=self._current_texts, store_generation=store.generation
        )
        self.weights = weights

    # ---- keeping the lexical index in step ----------------------------------------

    def _documents(self, where: str, params: list[Any]) -> list[Document]:
        rows = self.store.query(f"SELECT {FACT_COLUMNS} FROM facts WHERE {where} ORDER BY id",
                                params)
        return [_document(fact_from_row(row)) for row in rows]

    def _current_texts(self, user_id: str) -> list[Document]:
        return self._documents(f"user_id = ? AND {CURRENT}", [user_id])

    def on_change(
        self,
        user_id: str,
        generation: int,
        *,
        added: Sequence[Fact] = (),
        remove_ids: Sequence[int] = (),
    ) -> None:
        """Tell the lexical index about a committed change (call after ``index.apply``):
        ``added`` are the new current versions, as the unit of work recorded them."""
        if not self.lexical.is_loaded(user_id):
            return  # nothing cached: it is built from the store on the next search
        self.lexical.apply(user_id, generation, added=[_document(f) for f in added],
                           removed=list(remove_ids))

    def forget(self, user_id: str) -> None:
        """Drop a user's cached lexical index (after a purge)."""
        self.lexical.forget(user_id)

    # ---- searching ----------------------------------------------------------------------

    def search(self, request: SearchRequest, vector: np.ndarray) -> list[SearchHit]:
        """Hits for a request whose query embedding is ``vector``, best first."""
        if request.mode not in MODES:
            raise InvalidInputError(f"unknown search mode {request.mode!r}; use one of {MODES}")
        if request.mode == "vector":
            return self._vector_search(request, vector)
        if request.as_of is not None:
            return self._exact_hybrid(request, vector, as_of=request.as_of)
        narrowed = bool(request.filters or request.agent_id or request.run_id)
        depth = max(4 * request.k, 2 * CANDIDATES) if narrowed else max(2 * request.k,
                                                                         CANDIDATES)
        lexical = self.lexical.scores(request.user_id, request.query)
        lex_slots = lexical.top_slots(depth)
        lex_ids = lexical.ids_at(lex_slots).tolist()
        vec_ids: list[int] = []
        vec_sims: list[float] = []
        if request.mode == "hybrid":
            vec_ids, vec_sims = self.index.search(request.user_id, vector, depth)
        if not narrowed:
            return self._in_memory(request, vector, vec_ids, vec_sims, lex_ids, lex_slots,
                                   lexical)
        pool = self._candidates(request, vector, vec_ids, lex_ids, lexical, CURRENT, [])
        exhausted = len(vec_ids) < depth and len(lex_ids) < depth
        if narrowed and len(pool) < request.k and not exhausted:
            return self._exact_hybrid(request, vector, as_of=None)
        return self._rank(request, vector, pool, lexical, CURRENT, [], "hybrid")

    def _in_memory(
        self,
        request: SearchRequest,
        vector: np.ndarray,
        vec_ids: Sequence[int],
        vec_sims: Sequence[float],
        lex_ids: Sequence[int],
        lex_slots: np.ndarray,
        lexical: LexicalScores,
    ) -> list[SearchHit]:
        """Unfiltered current search scored from the two in-memory indexes.

        Both indexes hold exactly the user's current facts, so with no scope or
        filter to apply, candidates, neighbours and fusion need no SQL, and the hits
        come from the lexical index's documents too; DuckDB is asked only when a
        write is landing (see :meth:`_indexed_facts`). The pool is a numpy array of
        the lexical index's slots, and every signal is gathered from its per-slot
        columns (:meth:`~engine.retrieval.lexical.LexicalScores.neighbour_slots` and the
        others), then scored as columns (:func:`engine.retrieval.fusion.score`):
        no Python loop runs over the pool, and candidate objects are made only for the
        hits returned with ``explain``.

        Rows: first the vector hits (in their order), then the lexical-only hits, then
        the neighbours they bring in, in the order first met (row by row, the turn
        before, then the turn after); an expanded row links back to the row that
        brought it in. Row order decides nothing in the ranking (ties go to the lower
        fact id), only which row ``explain`` names.
        """
        import numpy as np

        weights = self._weights(request)
        slot_of = lexical.slot_of
        vec_slots = [slot_of.get(fact_id) for fact_id in vec_ids]
        vec_kept: Sequence[float] = vec_sims
        if None in vec_slots:  # a fact the lexical index has not seen yet (a write landing)
            vec_kept = [sim for slot, sim in zip(vec_slots, vec_sims, strict=True)
                        if slot is not None]
            vec_slots = [slot for slot in vec_slots if slot is not None]
        in_vector = set(vec_ids)
        alive = lexical.alive_at(lex_slots).tolist()
        lex_only, lex_only_slots = [], []
        for fact_id, slot, live in zip(lex_ids, lex_slots.tolist(), alive, strict=True):
            if live and fact_id not in in_vector:
                lex_only.append(fact_id)
                lex_only_slots.append(slot)
        retrieved_slots = np.asarray(vec_slots + lex_only_slots, dtype=np.int64)
        retrieved = len(retrieved_slots)
        neighbours = np.full((retrieved, 2), -1, dtype=np.int64)
        expanded_from = np.zeros(0, dtype=np.int64)  # row of the hit each expanded row came from
        slots = retrieved_slots
        if weights.neighbour > 0 and retrieved:
            found = lexical.neighbour_slots(retrieved_slots)
            where = np.flatnonzero(found.ravel() >= 0)  # row * 2 + column, in scan order
            met = np.concatenate((retrieved_slots, found.ravel()[where]))
            unique, first, inverse = np.unique(met, return_index=True, return_inverse=True)
            new = first >= retrieved
            row_of = np.empty(len(unique), dtype=np.int64)
            row_of[~new] = first[~new]
            new_at = np.flatnonzero(new)[np.argsort(first[new], kind="stable")]
            row_of[new_at] = retrieved + np.arange(len(new_at))
            flat = np.full(2 * retrieved, -1, dtype=np.int64)
            flat[where] = row_of[inverse[retrieved:]]
            linked = flat.reshape(retrieved, 2)
            # a row's neighbours are listed in the order found: the turn after moves
            # to the first column when there is no turn before
            only_after = linked[:, 0] < 0
            neighbours[:, 0] = np.where(only_after, linked[:, 1], linked[:, 0])
            neighbours[:, 1] = np.where(only_after, -1, linked[:, 1])
            expanded_from = where[first[new_at] - retrieved] // 2
            slots = np.concatenate((retrieved_slots, met[first[new_at]]))
            neighbours = np.concatenate((neighbours, np.stack(
                (expanded_from, np.full(len(expanded_from), -1, dtype=np.int64)), axis=1)))
        n = len(slots)
        ids = lexical.ids_at(slots)
        similarity = np.zeros(n, dtype=np.float64)
        similarity[: len(vec_kept)] = vec_kept
        if lex_only:
            found_ids, matrix = self.index.vectors(request.user_id, lex_only)
            if len(found_ids) == len(lex_only):  # all of them: the rows after the vector hits
                similarity[len(vec_kept) : retrieved] = matrix @ vector
            elif found_ids:
                row_of_id = {fact_id: row for row, fact_id in enumerate(lex_only,
                                                                        start=len(vec_kept))}
                similarity[[row_of_id[i] for i in found_ids]] = matrix @ vector
        bm25, valid_us = lexical.at_slots(slots)
        features = request.features()
        signals = Signals(
            ids=ids, similarity=similarity, bm25=bm25, valid_from_us=valid_us,
            expanded=np.arange(n) >= retrieved,
            named=lexical.named_at(slots, features.words) if weights.name
            else np.zeros(n, dtype=bool),
            timely=lexical.timely_at(slots) if features.asks_when and weights.time > 0
            else np.zeros(n, dtype=bool),
            neighbours=neighbours,
            slotted=self._slotted(lexical, slots, features)
            if features.slots and weights.slot else np.zeros(n, dtype=bool),
        )
        scored = score(signals, weights)
        wanted = scored.order[: request.k + 4].tolist()  # spares: one may be retired just now
        facts = self._indexed_facts(request, lexical, ids[wanted].tolist())
        hits = []
        for row in wanted:
            fact = facts.get(int(ids[row]))
            if fact is None:
                continue
            explain = None
            if request.explain:
                document = lexical.documents[int(slots[row])]
                candidate = Candidate(
                    fact_id=fact.id, text=document.text, metadata=document.names,
                    valid_from=document.valid_from or _EPOCH,
                    similarity=float(similarity[row]), bm25=float(bm25[row]),
                    vector_rank=_rank_in(vec_ids, fact.id), lexical_rank=_rank_in(lex_ids,
                                                                                fact.id),
                    expanded_from=(int(ids[expanded_from[row - retrieved]])
                                   if row >= retrieved else None), slot=fact.slot,
                    subject=fact.subject,
                    base=float(scored.base[row]), score=float(scored.score[row]))
                candidate.parts = scored.parts(row, signals, features, candidate)
                explain = self._explain(request, fact, candidate, "hybrid")
            hits.append(_hit(fact, float(scored.score[row]), explain))
            if len(hits) == request.k:
                break
        return hits


    @staticmethod
    def _slotted(lexical: LexicalScores, slots: np.ndarray,
                 features: QueryFeatures) -> np.ndarray:
        """The slot signal of the pool's rows; subjects are read only when a row is filed
        under an asked slot (most pools have none)."""
        slotted = lexical.slotted_at(slots, features.slots)
        if not slotted.any():
            return slotted
        return about_asked(lexical.subjects_at(slots), features.words, slotted)

    def _indexed_facts(
        self, request: SearchRequest, lexical: LexicalScores, ids: Sequence[int]
    ) -> dict[int, Fact]:
        """The current facts behind ``ids``, from the lexical index's documents when the
        index reflects the store's latest committed generation for the user, else from
        DuckDB (a write is landing: the store has the last word)."""
        if self.store.known_generation(request.user_id) != lexical.generation:
            return self._current_by_id(request, ids)
        facts, unknown = {}, []
        for fact_id in ids:
            document = lexical.document(fact_id)
            fact = None if document is None else document.fact
            if fact is None:
                unknown.append(fact_id)  # a document without its fact (custom index)
            elif fact.is_current and _in_scope(request, fact):
                facts[fact_id] = fact
        if unknown:
            facts.update(self._current_by_id(request, unknown))
        return facts

    def _current_by_id(self, request: SearchRequest, ids: Sequence[int]) -> dict[int, Fact]:
        """Current facts by id, with scope and filters checked in code.

        The SQL is a bare ``id IN (...)`` on purpose: DuckDB answers it from the primary
        key in about 2 ms at 100k facts, while adding the scope and currency predicates
        turns it into a scan (about 9 ms).
        """
        if not ids:
            return {}
        rows = self.store.query(f"SELECT {FACT_COLUMNS} FROM facts WHERE id IN {_ids_sql(ids)}")
        facts = {}
        for row in rows:
            fact = fact_from_row(row)
            if fact.is_current and _in_scope(request, fact):
                facts[fact.id] = fact
        return facts

    def _explain(
        self, request: SearchRequest, fact: Fact, candidate: Candidate, method: str
    ) -> dict[str, Any] | None:
        if not request.explain:
            return None
        return {
            **candidate.parts,
            "validity": {"valid_from": fact.valid_from, "valid_to": fact.valid_to,
                         "as_of": request.as_of, "current": fact.is_current},
            "score": candidate.score,
            "method": method,
            "mode": request.mode,
        }

    def _weights(self, request: SearchRequest) -> FusionWeights:
        return LEXICAL_ONLY if request.mode == "lexical" else self.weights

    def _candidates(
        self,
        request: SearchRequest,
        vector: np.ndarray,
        vec_ids: Sequence[int],
        lex_ids: Sequence[int],
        lexical: LexicalScores,
        time_sql: str,
        time_params: list[Any],
    ) -> dict[int, tuple[Fact, Candidate]]:
        """Fetch the union of both retrievers' ids in scope, with exact cosines."""
        ids = list(dict.fromkeys([*vec_ids, *lex_ids]))
        if not ids:
            return {}
        scope_sql, params = _scope_sql(request)
        rows = self.store.query(
            f"SELECT {FACT_COLUMNS}, array_inner_product(embedding,"
            f" {_vector_sql(vector, self.store.dim)}) FROM facts WHERE id IN {_ids_sql(ids)}"
            f" AND {time_sql} AND {scope_sql}",
            [*time_params, *params],
        )
        vec_rank = {fact_id: rank for rank, fact_id in enumerate(vec_ids, start=1)}
        lex_rank = {fact_id: rank for rank, fact_id in enumerate(lex_ids, start=1)}
        pool: dict[int, tuple[Fact, Candidate]] = {}
        for row in rows:
            fact = fact_from_row(row[:-1])
            if not matches(request.filters, _record(fact)):
                continue
            pool[fact.id] = (fact, Candidate(
                fact_id=fact.id, text=fact.text, metadata=fact.metadata,
                valid_from=fact.valid_from, similarity=float(row[-1]),
                bm25=lexical.get(fact.id), vector_rank=vec_rank.get(fact.id),
                lexical_rank=lex_rank.get(fact.id), slot=fact.slot,
                subject=fact.subject,
            ))
        return pool

    def _expand(
        self,
        request: SearchRequest,
        vector: np.ndarray,
        pool: dict[int, tuple[Fact, Candidate]],
        lexical: LexicalScores,
        time_sql: str,
        time_params: list[Any],
    ) -> None:
        """Add each candidate's neighbouring turns (adjacent source message, same time)."""
        sources = {
            fact.source_message_id: fact for fact, _ in pool.values()
            if fact.source_message_id is not None
        }
        wanted = sorted({s + d for s in sources for d in (-1, 1)} - set(sources))
        if wanted:
            scope_sql, params = _scope_sql(request)
            rows = self.store.query(
                f"SELECT {FACT_COLUMNS}, array_inner_product(embedding,"
                f" {_vector_sql(vector, self.store.dim)}) FROM facts"
                f" WHERE source_message_id IN {_ids_sql(wanted)}"
                f" AND {time_sql} AND {scope_sql}",
                [*time_params, *params],
            )
            for row in rows:
                fact = fact_from_row(row[:-1])
                if fact.id in pool or not matches(request.filters, _record(fact)):
                    continue
                pool[fact.id] = (fact, Candidate(
                    fact_id=fact.id, text=fact.text, metadata=fact.metadata,
                    valid_from=fact.valid_from, similarity=float(row[-1]),
                    bm25=lexical.get(fact.id), expanded_from=-1, slot=fact.slot,
                    subject=fact.subject,
                ))
                sources.setdefault(fact.source_message_id, fact)  # type: ignore[arg-type]
        for fact, candidate in pool.values():
            if fact.source_message_id is None:
                continue
            for delta in (-1, 1):
                other = sources.get(fact.source_message_id + delta)
                if other is not None and other.valid_from == fact.valid_from:
                    candidate.neighbours.append(other.id)
                    if pool[other.id][1].expanded_from == -1:
                        pool[other.id][1].expanded_from = fact.id

    def _rank(
        self,
        request: SearchRequest,
        vector: np.ndarray,
        pool: dict[int, tuple[Fact, Candidate]],
        lexical: LexicalScores,
        time_sql: str,
        time_params: list[Any],
        method: str,
    ) -> list[SearchHit]:
        weights = self._weights(request)
        if weights.neighbour > 0 and pool:
            self._expand(request, vector, pool, lexical, time_sql, time_params)
        ranked = fuse([c for _, c in pool.values()], request.features(), weights,
                      explain=request.explain)
        hits = []
        for candidate in ranked[: request.k]:
            fact = pool[candidate.fact_id][0]
            hits.append(_hit(fact, candidate.score,
                             self._explain(request, fact, candidate, method)))
        return hits

    def _exact_hybrid(
        self, request: SearchRequest, vector: np.ndarray, *, as_of: datetime | None
    ) -> list[SearchHit]:
        """Hybrid search by scanning DuckDB: point-in-time, or scope/filters too narrow."""
        import numpy as np

        scope_sql, params = _scope_sql(request)
        time_sql, time_params = _time_sql(as_of)
        rows = self.store.query(
            f"SELECT id, text, metadata, agent_id, run_id, category,"
            f" array_inner_product(embedding, {_vector_sql(vector, self.store.dim)}) FROM facts"
            f" WHERE {scope_sql} AND {time_sql} ORDER BY id",
            [*params, *time_params],
        )
        if request.filters:
            rows = [r for r in rows if matches(request.filters, {
                "category": r[5], "agent_id": r[3], "run_id": r[4],
                "metadata": _load_meta(r[2])})]
        depth = max(2 * request.k, CANDIDATES)
        lexical = LexicalScores.over(((int(r[0]), str(r[1])) for r in rows), request.query)
        lex_ids, _ = lexical.top(depth)
        vec_ids: list[int] = []
        if request.mode == "hybrid" and rows:
            sims = np.asarray([float(r[-1]) for r in rows])
            order = np.lexsort((np.arange(len(rows)), -sims))[:depth]
            vec_ids = [int(rows[i][0]) for i in order]
        pool = self._candidates(request, vector, vec_ids, lex_ids, lexical, time_sql,
                                time_params)
        return self._rank(request, vector, pool, lexical, time_sql, time_params, "exact")

    # ---- vector only (mode="vector") -------------------------------------------------

    def _vector_search(self, request: SearchRequest, vector: np.ndarray) -> list[SearchHit]:
        if request.as_of is not None:
            return self._exact(request, vector, as_of=request.as_of)
        narrowed = bool(request.filters) or request.agent_id or request.run_id
        wanted = max(4 * request.k, 50) if narrowed else request.k
        ids, sims = self.index.search(request.user_id, vector, wanted)
        hits = self._fetch(request, ids, sims)
        if narrowed and len(hits) < request.k and len(ids) == wanted:
            return self._exact(request, vector, as_of=None)
        return hits[: request.k]

    def _fetch(
        self, request: SearchRequest, ids: Sequence[int], sims: Sequence[float]
    ) -> list[SearchHit]:
        by_id = self._current_by_id(request, ids)
        hits = []
        for rank, (fact_id, sim) in enumerate(zip(ids, sims, strict=True), start=1):
            fact = by_id.get(fact_id)
            if fact is None:
                continue
            hits.append(_vector_hit(fact, sim, rank, request.explain, "hnsw"))
        return hits

    def _exact(
        self, request: SearchRequest, vector: np.ndarray, *, as_of: datetime | None
    ) -> list[SearchHit]:
        scope_sql, params = _scope_sql(request)
        time_sql, time_params = _time_sql(as_of)
        rows = self.store.query(
            f"SELECT {FACT_COLUMNS}, array_inner_product(embedding,"
            f" {_vector_sql(vector, self.store.dim)}) AS sim FROM facts"
            f" WHERE {scope_sql} AND {time_sql} ORDER BY sim DESC, id",
            [*params, *time_params],
        )
        hits = []
        for rank, row in enumerate(rows, start=1):
            fact = fact_from_row(row[:-1])
            if matches(request.filters, _record(fact)):
                hits.append(_vector_hit(fact, float(row[-1]), rank, request.explain, "exact"))
                if len(hits) == request.k:
                    break
        return hits


def _rank_in(ids: Sequence[int], fact_id: int) -> int | None:
    """The 1-based rank of ``fact_id`` among a retriever's hits (first occurrence), or None."""
    for rank, other in enumerate(ids, start=1):
        if other == fact_id:
            return rank
    return None


def _load_meta(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    return json.loads(raw) if raw else {}


def _detached(metadata: dict[str, Any]) -> dict[str, Any]:
    """A copy of a fact's metadata for a hit: the fact may be the lexical index's cached
    one, which a caller editing its hit must not change."""
    if any(isinstance(v, (dict, list)) for v in metadata.values()):
        return copy.deepcopy(metadata)
    return dict(metadata)


def _hit(fact: Fact, score: float, explain: dict[str, Any] | None) -> SearchHit:
    return SearchHit(
        id=fact.id,
        text=fact.text,
        score=score,
        user_id=fact.user_id,
        agent_id=fact.agent_id,
        run_id=fact.run_id,
        category=fact.category,
        metadata=_detached(fact.metadata),
        valid_from=fact.valid_from,
        valid_to=fact.valid_to,
        explain=explain,
        subject=fact.subject,
        slot=fact.slot,
        value=fact.value,
    )


def _vector_hit(fact: Fact, sim: float, rank: int, explain: bool, method: str) -> SearchHit:
    return _hit(fact, sim, {"vector": {"similarity": sim, "rank": rank, "method": method},
                            "mode": "vector"} if explain else None)
