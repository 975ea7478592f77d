"""Lexical back-ends compared for a memory engine: incremental inserts and query latency.

Documents are LoCoMo turns (``"<speaker>: <text>"``) repeated with a counter suffix
up to each size; queries are LoCoMo questions. For each option: the cost of building
the index, of making one newly inserted document searchable (a memory engine writes
after almost every message), and the p50/p95 of a top-50 query.

* ``engine``: :class:`engine.retrieval.lexical.LexicalIndex` (in-memory postings, incremental);
* ``duckdb_fts``: the ``fts`` extension from ``duckdb-extension-fts``; its index is not
  incremental, so "insert" = ``INSERT`` + ``PRAGMA create_fts_index(..., overwrite=1)``;
* ``sql_bm25``: BM25 computed by SQL over a ``(doc, term, tf)`` table kept up to date;
* ``bm25s``: only when the package is installed (it is not a dependency); a frozen
  sparse index, so "insert" = re-index everything.

Run: ``python -m benchmarks lexical_options [--sizes 10000,100000]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import percentiles, write_results

__all__ = ["main"]

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared/data/locomo/locomo_dev.json"


def _corpus(path: Path, size: int) -> tuple[list[str], list[str]]:
    data = json.loads(path.read_text())
    turns, questions = [], []
    for sample in data:
        conv = sample["conversation"]
        n = 1
        while f"session_{n}" in conv:
            turns += [f"{t['speaker']}: {t['text']}" for t in conv[f"session_{n}"]]
            n += 1
        questions += [q["question"] for q in sample["qa"] if q.get("category") != 5]
    docs = [turns[i % len(turns)] + (f" (#{i // len(turns)})" if i >= len(turns) else "")
            for i in range(size)]
    return docs, questions


def _time_queries(search: Callable[[str], object], queries: Sequence[str]) -> dict[str, float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query)
        times.append(time.perf_counter() - start)
    return percentiles(times)


def _engine(docs: list[str], queries: list[str], inserts: int) -> dict[str, Any]:
    from engine.retrieval.lexical import LexicalIndex

    generation = [1]
    index = LexicalIndex(load_documents=lambda u: list(enumerate(docs)),
                         store_generation=lambda u: generation[0])
    start = time.perf_counter()
    index.size("u")
    build = time.perf_counter() - start
    times = []
    for i in range(inserts):
        start = time.perf_counter()
        generation[0] += 1
        index.apply("u", generation[0], added=[(len(docs) + i, f"fresh note {i} about kayaks")])
        index.search("u", "kayaks", 50)  # searchable right away
        times.append(time.perf_counter() - start)
    return {"build_s": round(build, 3), "insert_then_search": percentiles(times),
            "query": _time_queries(lambda q: index.search("u", q, 50), queries)}


def _duckdb_fts(docs: list[str], queries: list[str], inserts: int) -> dict[str, Any]:
    import duckdb
    import duckdb_extension_fts

    con = duckdb.connect()
    package = Path(duckdb_extension_fts.__file__).parent
    (extension,) = package.glob(f"extensions/v{duckdb.__version__}/fts.duckdb_extension")
    con.execute(f"INSTALL '{extension}'")
    con.execute("LOAD fts")
    con.execute("CREATE TABLE docs (id BIGINT PRIMARY KEY, text VARCHAR)")
    con.executemany("INSERT INTO docs VALUES (?, ?)", list(enumerate(docs)))
    pragma = "PRAGMA create_fts_index('docs', 'id', 'text', overwrite=1)"
    start = time.perf_counter()
    con.execute(pragma)
    build = time.perf_counter() - start
    times = []
    for i in range(inserts):
        start = time.perf_counter()
        con.execute("INSERT INTO docs VALUES (?, ?)", [len(docs) + i, f"fresh note {i} kayaks"])
        con.execute(pragma)
        times.append(time.perf_counter() - start)
    sql = ("SELECT id, score FROM (SELECT id, fts_main_docs.match_bm25(id, ?) AS score"
           " FROM docs) WHERE score IS NOT NULL ORDER BY score DESC LIMIT 50")
    return {"build_s": round(build, 3), "insert_then_search": percentiles(times),
            "query": _time_queries(lambda q: con.execute(sql, [q]).fetchall(), queries)}


def _sql_bm25(docs: list[str], queries: list[str], inserts: int) -> dict[str, Any]:
    import duckdb

    from engine.retrieval.lexical import tokenize

    con = duckdb.connect()
    con.execute("CREATE TABLE terms (doc BIGINT, term VARCHAR, tf INTEGER)")
    con.execute("CREATE TABLE lengths (doc BIGINT, len INTEGER)")

    def rows(i: int, text: str) -> tuple[list[tuple[int, str, int]], int]:
        tokens = tokenize(text)
        return [(i, t, tokens.count(t)) for t in set(tokens)], len(tokens)

    start = time.perf_counter()
    term_rows, length_rows = [], []
    for i, text in enumerate(docs):
        terms, length = rows(i, text)
        term_rows += terms
        length_rows.append((i, length))
    import pyarrow as pa

    terms = pa.table({"doc": [r[0] for r in term_rows], "term": [r[1] for r in term_rows],
                      "tf": pa.array([r[2] for r in term_rows], pa.int32())})
    lengths = pa.table({"doc": [r[0] for r in length_rows],
                        "len": pa.array([r[1] for r in length_rows], pa.int32())})
    con.register("terms_table", terms)
    con.register("lengths_table", lengths)
    con.execute("INSERT INTO terms SELECT * FROM terms_table")
    con.execute("INSERT INTO lengths SELECT * FROM lengths_table")
    build = time.perf_counter() - start
    times = []
    for i in range(inserts):
        start = time.perf_counter()
        terms, length = rows(len(docs) + i, f"fresh note {i} about kayaks")
        con.executemany("INSERT INTO terms VALUES (?, ?, ?)", terms)
        con.execute("INSERT INTO lengths VALUES (?, ?)", [len(docs) + i, length])
        times.append(time.perf_counter() - start)
    sql = """
        WITH stats AS (SELECT count(*) AS n, avg(len) AS avgdl FROM lengths),
        q AS (SELECT unnest(?::VARCHAR[]) AS term),
        df AS (SELECT t.term, count(*) AS df FROM terms t JOIN q USING (term) GROUP BY t.term)
        SELECT t.doc, sum(ln(1 + (s.n - df.df + 0.5) / (df.df + 0.5)) * t.tf * 2.2
                      / (t.tf + 1.2 * (0.5 + 0.5 * l.len / s.avgdl))) AS score
        FROM terms t JOIN df USING (term) JOIN lengths l ON l.doc = t.doc, stats s
        GROUP BY t.doc ORDER BY score DESC LIMIT 50"""
    return {"build_s": round(build, 3), "insert_then_search": percentiles(times),
            "query": _time_queries(lambda q: con.execute(sql, [tokenize(q)]).fetchall(),
                                   queries)}


def _bm25s(docs: list[str], queries: list[str], inserts: int) -> dict[str, Any]:
    import bm25s

    from engine.retrieval.lexical import tokenize

    def build(corpus: list[str]) -> Any:
        retriever = bm25s.BM25()
        retriever.index([tokenize(d) for d in corpus], show_progress=False)
        return retriever

    start = time.perf_counter()
    retriever = build(docs)
    build_s = time.perf_counter() - start
    times = []
    for i in range(min(inserts, 3)):
        start = time.perf_counter()
        retriever = build([*docs, f"fresh note {i} about kayaks"])
        times.append(time.perf_counter() - start)
    return {"build_s": round(build_s, 3), "insert_then_search": percentiles(times),
            "query": _time_queries(lambda q: retriever.retrieve([tokenize(q) or ["x"]], k=50,
                                                                 show_progress=False), queries)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m benchmarks lexical_options``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks lexical_options")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--inserts", type=int, default=5)
    args = parser.parse_args(argv)
    options: dict[str, Callable[[list[str], list[str], int], dict[str, Any]]] = {
        "engine": _engine, "duckdb_fts": _duckdb_fts, "sql_bm25": _sql_bm25}
    if importlib.util.find_spec("bm25s") is not None:
        options["bm25s"] = _bm25s
    results: dict[str, Any] = {}
    for size in (int(s) for s in args.sizes.split(",") if s):
        docs, questions = _corpus(args.data, size)
        queries = questions[: args.queries]
        for name, run in options.items():
            result = run(docs, queries, args.inserts)
            results.setdefault(str(size), {})[name] = result
            print(f"{size:>7} {name:11s} build {result['build_s']:8.3f}s  insert+search p50 "
                  f"{result['insert_then_search']['p50_ms']:9.2f} ms  query p50 "
                  f"{result['query']['p50_ms']:7.2f} ms  p95 {result['query']['p95_ms']:7.2f} ms",
                  flush=True)
    path = write_results("lexical_options", {"sizes": args.sizes, "queries": args.queries,
                                             "inserts": args.inserts}, results)
    print(f"wrote {path}")
    return 0
