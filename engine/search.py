"""Retrieval: find a user's facts relevant to a query.

Current facts are searched through the per-user hnswlib index, then fetched
from DuckDB with scope and filters applied in SQL (and checked again in code).
When filters throw away too many neighbours, the search falls back to an exact
scan in DuckDB so a filtered search never misses matches. Point-in-time
searches (``as_of``) scan the fact versions valid at that time with DuckDB's
array functions, since the ANN index holds current facts only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from engine.filters import compile_filters, matches
from engine.records import fact_from_row
from engine.store import CURRENT, FACT_COLUMNS, Store
from engine.types import Fact, SearchHit

if TYPE_CHECKING:
    import numpy as np

    from engine.index import VectorIndex

__all__ = ["SearchRequest", "Searcher", "valid_at_sql"]


def valid_at_sql() -> str:
    """SQL predicate (two ``?`` for the time) for versions true in the world at a time.

    A version counts if its valid interval contains the time and it was either
    never retired or retired only because a newer version superseded it
    (a deleted fact was retracted, so it is not believed for any time).
    """
    return (
        "valid_from <= ? AND (valid_to IS NULL OR valid_to > ?)"
        " AND (expired_at IS NULL OR superseded_by IS NOT NULL)"
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


def _record(fact: Fact) -> dict[str, Any]:
    return {"category": fact.category, "agent_id": fact.agent_id, "run_id": fact.run_id,
            "metadata": fact.metadata}


class Searcher:
    """Vector retrieval over one store and its index."""

    def __init__(self, store: Store, index: VectorIndex) -> None:
        self.store = store
        self.index = index

    def search(self, request: SearchRequest, vector: np.ndarray) -> list[SearchHit]:
        """Hits for a request whose query embedding is ``vector``, best first."""
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
        if not ids:
            return []
        scope_sql, params = _scope_sql(request)
        rows = self.store.query(
            f"SELECT {FACT_COLUMNS} FROM facts WHERE id IN (SELECT unnest(?::BIGINT[]))"
            f" AND {CURRENT} AND {scope_sql}",
            [list(ids), *params],
        )
        by_id = {int(row[0]): fact_from_row(row) for row in rows}
        hits = []
        for rank, (fact_id, sim) in enumerate(zip(ids, sims, strict=True), start=1):
            fact = by_id.get(fact_id)
            if fact is None or not matches(request.filters, _record(fact)):
                continue
            hits.append(self._hit(fact, sim, rank, request.explain, "hnsw"))
        return hits

    def _exact(
        self, request: SearchRequest, vector: np.ndarray, *, as_of: datetime | None
    ) -> list[SearchHit]:
        scope_sql, params = _scope_sql(request)
        if as_of is None:
            time_sql, time_params = CURRENT, []
        else:
            time_sql, time_params = valid_at_sql(), [as_of, as_of]
        rows = self.store.query(
            f"SELECT {FACT_COLUMNS}, array_inner_product(embedding, ?::FLOAT[{self.store.dim}])"
            f" AS sim FROM facts WHERE {scope_sql} AND {time_sql}"
            " ORDER BY sim DESC, id LIMIT ?",
            [vector.tolist(), *params, *time_params, request.k],
        )
        hits = []
        for rank, row in enumerate(rows, start=1):
            fact = fact_from_row(row[:-1])
            if matches(request.filters, _record(fact)):
                hits.append(self._hit(fact, float(row[-1]), rank, request.explain, "exact"))
        return hits

    @staticmethod
    def _hit(fact: Fact, sim: float, rank: int, explain: bool, method: str) -> SearchHit:
        return SearchHit(
            id=fact.id,
            text=fact.text,
            score=sim,
            user_id=fact.user_id,
            agent_id=fact.agent_id,
            run_id=fact.run_id,
            category=fact.category,
            metadata=fact.metadata,
            valid_from=fact.valid_from,
            valid_to=fact.valid_to,
            explain={"vector": {"similarity": sim, "rank": rank, "method": method}}
            if explain
            else None,
        )
