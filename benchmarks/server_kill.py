"""A real ``memengine serve`` killed under load: client threads add and search over HTTP
while the server process is SIGKILLed at a random moment.

Each round starts ``python -m engine ... serve`` on a free loopback port (uvicorn, the
store's DuckDB file owned by the server), runs ``clients`` threads with their own
:class:`engine.client.MemoryClient` doing raw adds, ``infer=True`` adds that answer 202
at once (and, with an LM, adds that wait for extraction) and searches, then kills the
server. Only a 2xx reply is an acknowledgement: it is recorded, in the crash harness's
format, in the parent (which is never killed). After the kill
:func:`benchmarks.crash_harness.verify` opens the store the way a user would and checks
every acknowledged add, that pending messages are processed, no duplicates, both indexes
against DuckDB and the events against the facts.

Without ``lm`` the server is given an LM file that does not exist, so its inferred
messages stay pending (the server answers 202 and keeps them); ``verify`` then extracts
them with the crash harness's scripted extractor. With ``lm`` (a GGUF name) the server
extracts for real in its background worker while it is killed.

A reply that is not 2xx and not a dropped connection (a 500, a timeout while the
server is up) is a problem too: the server must not fail under load.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.crash_harness import DIM, REPO, USERS, KillResult, _ack, verify

__all__ = ["server_round"]


class _Load:
    """The client threads of one round and what they were promised."""

    def __init__(self, url: str, seed: int, clients: int, lm: str | None) -> None:
        self.url = url
        self.seed = seed
        self.lm = lm
        self.records: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.requests = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, args=(n,), daemon=True)
                        for n in range(clients)]

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.records.append(record)

    def _work(self, worker: int) -> None:
        from engine.client import MemoryClient
        from engine.errors import ServerError

        rng = random.Random(self.seed * 1000 + worker)
        with MemoryClient(self.url, timeout=60, wait_timeout=600) as client:
            step = 0
            while not self.stop.is_set():
                step += 1
                token = f"tok{self.seed}c{worker}x{step}"
                user = rng.choice(USERS)
                try:
                    self._one(client, rng, user, token)
                except ServerError as exc:
                    if "cannot reach" in str(exc):
                        return  # the server is gone: the kill
                    with self._lock:
                        self.problems.append(f"client {worker}: {exc}")
                    return
                except Exception as exc:  # an error reply the server should not give
                    with self._lock:
                        self.problems.append(f"client {worker}: {type(exc).__name__}: {exc}")
                    return
                with self._lock:
                    self.requests += 1

    def _one(self, client: Any, rng: random.Random, user: str, token: str) -> None:
        roll = rng.random()
        if roll < 0.45:
            texts = [f"{user} remembers {token}n{n}" for n in range(rng.randint(1, 3))]
            result = client.add(texts, user_id=user, infer=False)
            self._record({"op": "raw", "user": user, "message_ids": result.message_ids,
                          "contents": texts, "fact_ids": _fact_ids(result)})
        elif roll < 0.70:
            text = f"{user} mentions {token}"
            result = client.add(text, user_id=user, infer=True, wait=False)
            self._record({"op": "background", "user": user, "message_ids": result.message_ids,
                          "contents": [text], "lm": bool(self.lm)})
        elif roll < 0.78 and self.lm:
            text = f"{user} says {token}"
            result = client.add(text, user_id=user, infer=True, wait=True)
            self._record({"op": "infer", "user": user, "message_ids": result.message_ids,
                          "contents": [text], "fact_ids": _fact_ids(result),
                          "pending": result.pending, "lm": True})
        else:
            client.search(f"what did {user} say?", user_id=user, k=5)


def _fact_ids(result: Any) -> list[int]:
    return sorted({e.fact_id for e in result.events if e.fact_id is not None})


def _wait_ready(url: str, process: subprocess.Popen[str], timeout: float) -> bool:
    from engine.client import MemoryClient
    from engine.errors import ServerError

    deadline = time.monotonic() + timeout
    with MemoryClient(url, timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                client.health()
                return True
            except ServerError:
                if process.poll() is not None:
                    return False
                time.sleep(0.1)
    return False


def server_round(db: Path, acks: Path, *, seed: int, max_delay: float, clients: int = 4,
                 lm: str | None = None, timeout: float = 120.0,
                 on_ready: Callable[[], None] | None = None) -> KillResult:
    """Start a server on ``db``, load it from ``clients`` threads, SIGKILL it after a
    random delay, then verify every acknowledged add (appended to ``acks``)."""
    from engine.serving.thread import free_port

    rng = random.Random(seed)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    lm_spec = lm or str(db.parent / "no-lm-here.gguf")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "MEMENGINE_KV_DIR": os.environ.get("MEMENGINE_KV_DIR", "")}
    env.pop("MEMENGINE_API_KEY", None)
    db.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "engine", "--db", str(db), "--embedder",
               f"hashing-v1-{DIM}", "--lm", lm_spec, "serve", "--port", str(port),
               "--log-level", "critical"]
    started = time.perf_counter()
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True)
    result = KillResult()
    try:
        if not _wait_ready(url, server, timeout):
            server.kill()
            server.wait(timeout=timeout)
            result.problems.append(f"server did not start (exit {server.returncode})")
            return result
        if on_ready is not None:
            on_ready()
        load = _Load(url, seed, clients, lm)
        for thread in load.threads:
            thread.start()
        time.sleep(rng.uniform(0.05, max_delay))
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=timeout)
        load.stop.set()
        for thread in load.threads:
            thread.join(timeout=timeout)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=timeout)
    alive = time.perf_counter() - started
    with acks.open("a", encoding="utf-8") as handle:
        for record in load.records:
            _ack(handle, record)
    result = verify(db, acks, lm)
    result.problems[:0] = load.problems
    result.seconds_alive = alive
    result.requests = load.requests
    return result
