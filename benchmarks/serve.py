"""HTTP API against in-process calls: raw adds, searches and ``context``.

A store of ``--facts`` facts for one user is served by a real uvicorn on loopback
(:class:`engine.serving.thread.ThreadedServer`, the same app as ``memengine serve``) in
this process. Each concurrency level runs the same calls three ways, side by side in one
run:

- ``in_process``: that many threads calling the shared ``Memory`` (the floor);
- ``http_processes``: that many client processes (``multiprocessing``, spawned once and
  reused), each with its own ``MemoryClient``: what an application in another process
  sees, with the clients outside the server's interpreter and GIL;
- ``http_threads``: that many threads in the server's own process, each with its own
  ``MemoryClient`` (clients and server share one GIL).

Per-request latency (p50/p95/p99), throughput and failed requests are recorded for
searches, then raw adds, then ``context`` at one client. On a small machine the clients
and the server still share the cores: the CPU and core count are recorded with the
figures. Results: ``results/serve.json``, ``results/serve.md`` and ``results/serve.png``.

    python -m benchmarks serve [--quick] [--facts N] [--requests N] [--concurrency 1,4,16]
                               [--where in_process,http_processes,http_threads]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import (
    args_config,
    default_embedder_spec,
    percentiles,
    pyplot,
    save_plot,
    scratch_dir,
    write_results,
)

__all__ = ["ClientProcesses", "call", "drive_threads", "main", "markdown", "run"]

QUERIES = ["what does she drink?", "where does she live?", "her sister's name",
           "favourite food", "what sport does she play?", "her job"]
WHERE = ("in_process", "http_processes", "http_threads")
KINDS = ("search", "add")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--facts", type=int, default=2000, help="Facts in the served store.")
    p.add_argument("--requests", type=int, default=640, help="Requests per level and kind.")
    p.add_argument("--concurrency", default="1,4,16,64", help="Client counts.")
    p.add_argument("--where", default=",".join(WHERE),
                   help="Which of in_process, http_processes, http_threads to run.")
    p.add_argument("--embedder", default=None, help="Embedder [default: MiniLM].")
    p.add_argument("--out", type=Path, default=None, help="Results folder.")
    p.add_argument("--quick", action="store_true", help="200 facts, 128 requests, 1,4,16.")
    return p


def call(target: Any, kind: str, n: int, i: int, tag: str) -> Any:
    """One request of ``kind`` by client ``n`` (a ``Memory`` or a ``MemoryClient``)."""
    if kind == "search":
        return target.search(QUERIES[i % len(QUERIES)], user_id="maria", k=10)
    if kind == "context":
        return target.context(QUERIES[i % len(QUERIES)], user_id="maria")
    return target.add(f"{tag} note {n}-{i}", user_id=f"writer{n % 4}", infer=False)


def _timed(target: Any, kind: str, n: int, count: int, tag: str
           ) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    failures: list[str] = []
    for i in range(count):
        started = time.perf_counter()
        try:
            call(target, kind, n, n * count + i, tag)
        except Exception as exc:  # counted: the benchmark reports lost requests
            failures.append(f"{type(exc).__name__}: {exc}")
            continue
        latencies.append(time.perf_counter() - started)
    return latencies, failures


def _row(clients: int, per_client: int, latencies: list[float], failures: list[str],
         wall: float, where: str) -> dict[str, Any]:
    return {"where": where, "clients": clients, "requests": per_client * clients,
            "failed": len(failures), "failures": failures[:5],
            "throughput_rps": round(len(latencies) / wall, 1), **percentiles(latencies)}


def drive_threads(clients: int, requests: int, kind: str, where: str,
                  target_for: Callable[[int], Any], tag: str) -> dict[str, Any]:
    """``clients`` threads share ``requests`` calls; latencies, throughput, failures."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    per_client = max(1, requests // clients)
    targets = [target_for(n) for n in range(clients)]

    def worker(n: int) -> None:
        own, failed = _timed(targets[n], kind, n, per_client, tag)
        with lock:
            latencies.extend(own)
            failures.extend(failed)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _row(clients, per_client, latencies, failures, time.perf_counter() - started,
                where)


def _client_process(url: str, n: int, tasks: Any, results: Any) -> None:
    """A client process: one ``MemoryClient``; runs each task it is sent, reports back."""
    from engine.client import MemoryClient

    with MemoryClient(url) as client:
        client.health()  # connected before any timing starts
        results.put(("ready", n, [], []))
        while (task := tasks.get()) is not None:
            kind, count, tag = task
            latencies, failures = _timed(client, kind, n, count, tag)
            results.put(("done", n, latencies, failures))


class ClientProcesses:
    """``count`` spawned client processes of the server at ``url``, reused across runs."""

    def __init__(self, url: str, count: int, *, start_timeout: float = 120) -> None:
        context = multiprocessing.get_context("spawn")  # the parent runs threads
        self.results = context.Queue()
        self.tasks = [context.Queue() for _ in range(count)]
        self.processes = [
            context.Process(target=_client_process, args=(url, n, self.tasks[n], self.results),
                            name=f"memengine-bench-client-{n}", daemon=True)
            for n in range(count)]
        for process in self.processes:
            process.start()
        for _ in range(count):
            self.results.get(timeout=start_timeout)

    def drive(self, clients: int, requests: int, kind: str, tag: str) -> dict[str, Any]:
        """The first ``clients`` processes share ``requests`` calls of ``kind``."""
        per_client = max(1, requests // clients)
        latencies: list[float] = []
        failures: list[str] = []
        started = time.perf_counter()
        for n in range(clients):
            self.tasks[n].put((kind, per_client, tag))
        for _ in range(clients):
            _, _, own, failed = self.results.get()
            latencies.extend(own)
            failures.extend(failed)
        return _row(clients, per_client, latencies, failures, time.perf_counter() - started,
                    "http_processes")

    def close(self) -> None:
        for queue in self.tasks:
            queue.put(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from engine.client import MemoryClient
    from engine.memory import Memory
    from engine.serving.http import create_app
    from engine.serving.thread import ThreadedServer

    levels = [int(c) for c in args.concurrency.split(",")]
    wheres = [w.strip() for w in args.where.split(",") if w.strip()]
    unknown = set(wheres) - set(WHERE)
    if unknown:
        raise SystemExit(f"--where: unknown {sorted(unknown)}; choose from {', '.join(WHERE)}")
    results: dict[str, Any] = {"search": [], "add": [], "context": []}
    with scratch_dir("serve") as workdir:
        memory = Memory(workdir / "m.duckdb", embedder=args.embedder or default_embedder_spec(),
                        infer=False, process_pending=False)
        memory.add([f"fact number {i}: she likes item {i % 97} in {i % 13}"
                    for i in range(args.facts)], user_id="maria")
        server = ThreadedServer(create_app(memory))
        pool = ClientProcesses(server.url, max(levels)) if "http_processes" in wheres else None
        clients: list[MemoryClient] = []

        def http_client(n: int) -> MemoryClient:
            clients.append(MemoryClient(server.url))
            return clients[-1]

        def measure(kind: str, where: str, level: int, requests: int) -> dict[str, Any]:
            tag = f"{where}-{level}"
            if where == "http_processes":
                assert pool is not None
                return pool.drive(level, requests, kind, tag)
            target_for = (lambda n: memory) if where == "in_process" else http_client
            return drive_threads(level, requests, kind, where, target_for, tag)

        try:
            for level in levels:
                for kind in KINDS:
                    for where in wheres:
                        row = measure(kind, where, level, args.requests)
                        results[kind].append(row)
                        print(f"{kind:6} {where:14} c={level:3} p50={row.get('p50_ms')} ms "
                              f"p99={row.get('p99_ms')} ms {row['throughput_rps']} rps "
                              f"failed={row['failed']}", flush=True)
                for client in clients:
                    client.close()
                clients.clear()
            for where in wheres:
                row = measure("context", where, 1, max(20, args.requests // 16))
                results["context"].append(row)
                print(f"context {where:14} p50={row.get('p50_ms')} ms", flush=True)
        finally:
            if pool is not None:
                pool.close()
            for client in clients:
                client.close()
            server.stop()
            memory.close()
    by = {(r["where"], r["clients"]): r for r in results["search"]}
    results["search_http_overhead_p50_ms"] = {
        where: {level: round(by[(where, level)]["p50_ms"] - by[("in_process", level)]["p50_ms"],
                             3)
                for level in levels
                if "p50_ms" in by.get((where, level), {})
                and "p50_ms" in by.get(("in_process", level), {})}
        for where in wheres if where != "in_process"}
    return results


def markdown(data: dict[str, Any]) -> str:
    """The results as the tables of ``results/serve.md``."""
    machine, config, results = data["machine"], data["config"], data["results"]
    lines = [
        "# HTTP API beside in-process calls (`python -m benchmarks serve`)", "",
        f"CPU: {machine['cpu']}, {machine['logical_cores']} logical cores (clients and server "
        f"share them); load average at the end {machine['load_average']}; commit "
        f"{machine['git_commit']}; {machine['time']}.",
        f"Store: {config['facts']} facts, {config['requests']} requests per row, embedder "
        f"{config['embedder'] or 'MiniLM'}.", "",
        "`in_process`: threads calling `Memory`; `http_processes`: one `MemoryClient` per "
        "client process; `http_threads`: one `MemoryClient` per thread inside the server's "
        "process.", ""]
    for kind in ("search", "add", "context"):
        lines += [f"## {kind}", "",
                  "| clients | where | p50 ms | p95 ms | p99 ms | req/s | failed |",
                  "|---|---|---|---|---|---|---|"]
        for row in results[kind]:
            lines.append(f"| {row['clients']} | {row['where']} | {row.get('p50_ms', '-')} | "
                         f"{row.get('p95_ms', '-')} | {row.get('p99_ms', '-')} | "
                         f"{row['throughput_rps']} | {row['failed']} |")
        lines.append("")
    lines += ["Search p50 added by HTTP over the in-process call (ms, by clients): "
              f"`{results['search_http_overhead_p50_ms']}`", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], out_dir: Path | None) -> Path:
    """Search p50 and p99 by clients, one line per way of calling."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, stat in zip(axes, ("p50_ms", "p99_ms"), strict=True):
        for where in WHERE:
            rows = [r for r in results["search"] if r["where"] == where and stat in r]
            if rows:
                axis.plot([r["clients"] for r in rows], [r[stat] for r in rows], marker="o",
                          label=where)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("concurrent clients")
        axis.set_ylabel(f"search {stat.replace('_ms', '')} (ms)")
        axis.legend()
    return save_plot(fig, "serve", out_dir)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.facts, args.requests, args.concurrency = 200, 128, "1,4,16"
    results = run(args)
    path = write_results("serve", args_config(args), results, args.out)
    (path.parent / "serve.md").write_text(markdown(json.loads(path.read_text())))
    plot(results, args.out)
    print(f"search over HTTP adds (p50, ms, by clients): {results['search_http_overhead_p50_ms']}")
    print(f"wrote {path}, {path.parent / 'serve.md'}")
    failed = sum(r["failed"] for kind in ("search", "add", "context") for r in results[kind])
    return 1 if failed else 0
