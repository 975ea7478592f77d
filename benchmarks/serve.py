"""HTTP API against in-process calls: raw adds, searches and ``context``.

A store of ``--facts`` facts for one user is served by a real uvicorn on loopback
(:class:`engine.serving.thread.ThreadedServer`, the same app as ``memengine serve``).
At each concurrency level, that many threads (each with its own ``MemoryClient``, or
calling the shared ``Memory`` in-process) run searches, then raw adds; per-request
latency (p50/p95/p99), throughput and failed requests are recorded side by side, then
``context`` at one client. Client and server share the machine's cores.

    python -m benchmarks serve [--quick] [--facts N] [--requests N] [--embedder SPEC]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    args_config,
    default_embedder_spec,
    percentiles,
    scratch_dir,
    write_results,
)

QUERIES = ["what does she drink?", "where does she live?", "her sister's name",
           "favourite food", "what sport does she play?", "her job"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks serve", description=__doc__)
    p.add_argument("--facts", type=int, default=2000, help="Facts in the served store.")
    p.add_argument("--requests", type=int, default=640, help="Requests per level and kind.")
    p.add_argument("--concurrency", default="1,4,16,64", help="Client counts.")
    p.add_argument("--embedder", default=None, help="Embedder [default: MiniLM].")
    p.add_argument("--quick", action="store_true", help="200 facts, 128 requests, 1,4,16.")
    return p


def _drive(clients: int, requests: int, make_call: Callable[[int], Callable[[int], Any]]
           ) -> dict[str, Any]:
    """``clients`` threads share ``requests`` calls; latencies, throughput, failures."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    per_client = max(1, requests // clients)

    def worker(n: int) -> None:
        call = make_call(n)
        own: list[float] = []
        for i in range(per_client):
            started = time.perf_counter()
            try:
                call(n * per_client + i)
            except Exception as exc:  # counted: the benchmark reports lost requests
                with lock:
                    failures.append(f"{type(exc).__name__}: {exc}")
                continue
            own.append(time.perf_counter() - started)
        with lock:
            latencies.extend(own)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": per_client * clients, "failed": len(failures),
            "failures": failures[:5], "throughput_rps": round(len(latencies) / wall, 1),
            **percentiles(latencies)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.client import MemoryClient
    from engine.memory import Memory
    from engine.serving.http import create_app
    from engine.serving.thread import ThreadedServer

    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[str, Any] = {"search": [], "add": [], "context": {}}
    with scratch_dir("serve") as workdir:
        memory = Memory(workdir / "m.duckdb", embedder=args.embedder or default_embedder_spec(),
                        infer=False, process_pending=False)
        memory.add([f"fact number {i}: she likes item {i % 97} in {i % 13}"
                    for i in range(args.facts)], user_id="maria")
        server = ThreadedServer(create_app(memory))
        try:
            def http(n: int) -> MemoryClient:
                return MemoryClient(server.url)

            for clients in levels:
                for kind in ("search", "add"):
                    for where in ("in_process", "http"):
                        def make(n: int, where: str = where, kind: str = kind, c: int = clients
                                 ) -> Callable[[int], Any]:
                            target: Any = memory if where == "in_process" else http(n)
                            if kind == "search":
                                return lambda i: target.search(QUERIES[i % len(QUERIES)],
                                                               user_id="maria", k=10)
                            return lambda i: target.add(f"{where} note {c}-{i}",
                                                        user_id=f"writer{n % 4}", infer=False)
                        row = _drive(clients, args.requests, make)
                        row["where"] = where
                        results[kind].append(row)
                        print(f"{kind:6} {where:10} c={clients:3} p50={row.get('p50_ms')} ms "
                              f"p99={row.get('p99_ms')} ms {row['throughput_rps']} rps "
                              f"failed={row['failed']}", flush=True)
            for where in ("in_process", "http"):
                target: Any = memory if where == "in_process" else http(0)
                row = _drive(1, max(20, args.requests // 16), lambda n, t=target: (
                    lambda i: t.context(QUERIES[i % len(QUERIES)], user_id="maria")))
                results["context"][where] = row
                print(f"context {where:10} p50={row.get('p50_ms')} ms", flush=True)
        finally:
            server.stop()
            memory.close()
    by = {(r["where"], r["clients"]): r for r in results["search"]}
    results["search_http_overhead_p50_ms"] = {
        c: round(by[("http", c)]["p50_ms"] - by[("in_process", c)]["p50_ms"], 3)
        for c in levels if "p50_ms" in by.get(("http", c), {})}
    return results


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.facts, args.requests, args.concurrency = 200, 128, "1,4,16"
    results = run(args)
    path = write_results("serve", args_config(args), results)
    print(f"search over HTTP adds (p50, ms, by clients): {results['search_http_overhead_p50_ms']}")
    print(f"wrote {path}")
    failed = sum(r["failed"] for kind in ("search", "add") for r in results[kind])
    return 1 if failed else 0
